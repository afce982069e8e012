"""File and media inputs end to end: ``writer-sdk`` uploads a document, then calls an
agent (as a job and synchronously) with its file id, against real ``copydesk serve``
processes; images reach an OpenAI-compatible server as ``image_url`` parts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import writerai

from tests.e2e.conftest import CopydeskServer, write_agent
from tests.e2e.jobs_fixtures import FakeLLM, fake_llm_fixture
from tests.e2e.test_applications_sdk import check_envelope
from tests.e2e.test_files_sdk import png, upload, wait_processed
from tests.e2e.test_jobs_sdk import wait_for

__all__ = ["fake_llm_fixture"]

from tests.e2e.conftest import SUMMARY_ID

RULES_ID = "0b7f3a5e-2c41-4d8e-9f61-3a5b7c9d1e20"
VISION_ID = "7c2e9d41-5a3b-4f60-8e1d-2b4c6a8f0e13"
SENTENCE = "Copydesk shipped the orbital teapot on Tuesday."


def make_pdf(lines: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    for line in lines:
        pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def inputs(document: list[str], **more: list[str]) -> list[dict[str, Any]]:
    return [{"id": "document", "value": document}] + [
        {"id": k, "value": v} for k, v in more.items()
    ]


def test_a_pdf_uploaded_with_the_sdk_is_summarised_as_a_job(client: writerai.Writer) -> None:
    pdf = make_pdf(["Quarterly launch notes", SENTENCE, "Nobody was harmed."])
    uploaded = upload(client, "launch-notes.pdf", pdf)
    # The job is created at once; it waits for the text extraction if that is not done.
    job = client.applications.jobs.create(SUMMARY_ID, inputs=inputs([uploaded.id]))
    done = wait_for(client, job.id)
    assert done.status == "completed", done
    assert done.data is not None
    assert done.data.title == "Summary"
    # The deterministic provider echoes the start of the prompt: the PDF's text was in it.
    assert SENTENCE in done.data.suggestion
    assert 'Document "launch-notes.pdf"' in done.data.suggestion


def test_a_document_input_works_synchronously_too(client: writerai.Writer) -> None:
    uploaded = upload(client, "notes.txt", f"{SENTENCE}\n".encode())
    assert wait_processed(client, uploaded.id).status == "completed"
    answer = client.applications.generate_content(
        SUMMARY_ID, inputs=inputs([uploaded.id], focus=["dates"])
    )
    assert SENTENCE in answer.suggestion
    assert "focusing on dates" in answer.suggestion


def test_another_organisations_file_is_refused(server: CopydeskServer) -> None:
    theirs = server.client(server.new_key("elsewhere"))
    foreign = upload(theirs, "theirs.txt", b"their secret plans")
    with pytest.raises(writerai.BadRequestError) as caught:
        server.client().applications.jobs.create(SUMMARY_ID, inputs=inputs([foreign.id]))
    [item] = check_envelope(caught.value, 400, "BadRequest")
    assert item["extras"]["rule"] == "file_not_found"
    assert "is not a file of this organisation" in item["description"]


RULES_AGENT = f"""\
id: {RULES_ID}
name: Strict reader
inputs:
  - name: document
    input_type: file
    options:
      max_files: 2
      file_types: [txt]
      max_word_count: 5
      max_file_size_mb: 1
      upload_types: [file_id]
  - name: picture
    input_type: media
    required: false
    options:
      file_types: [png]
      max_image_size_mb: 1
prompt: "{{{{ document }}}} {{{{ picture }}}}"
model:
  provider: local
"""

VISION_AGENT = f"""\
id: {VISION_ID}
name: Picture describer
inputs:
  - name: picture
    input_type: media
prompt: "Describe the picture."
model:
  provider: blind
"""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("strict-agents")
    write_agent(folder, "rules.yaml", RULES_AGENT)
    write_agent(folder, "vision.yaml", VISION_AGENT)
    running = CopydeskServer(
        tmp_path_factory.mktemp("strict") / "data",
        agents=[folder],
        env={
            # A provider that cannot take images (nothing listens there: it is never called).
            "COPYDESK_PROVIDERS__BLIND__KIND": "openai",
            "COPYDESK_PROVIDERS__BLIND__BASE_URL": "http://127.0.0.1:9/v1",
            "COPYDESK_PROVIDERS__BLIND__OPTIONS__IMAGES": "false",
        },
    )
    running.start()
    yield running
    running.stop()


def refusal(sdk: writerai.Writer, agent_id: str, values: list[dict[str, Any]]) -> list[str]:
    """The rules broken, from a 400 of a job create and of a synchronous call alike."""
    found: list[list[str]] = []
    for call in (sdk.applications.jobs.create, sdk.applications.generate_content):
        with pytest.raises(writerai.BadRequestError) as caught:
            call(agent_id, inputs=values)  # type: ignore[operator]
        found.append([i["extras"]["rule"] for i in check_envelope(caught.value, 400, "BadRequest")])
    assert found[0] == found[1]
    return found[0]


def test_every_option_of_file_and_media_inputs_is_enforced(strict: CopydeskServer) -> None:
    sdk = strict.client()
    ok = upload(sdk, "ok.txt", b"four words in here")
    wordy = upload(sdk, "wordy.txt", b"one two three four five six seven")
    csv = upload(sdk, "table.csv", b"a,b\n1,2\n")
    big = upload(sdk, "big.txt", b"x" * (1024 * 1024 + 1))
    image = upload(sdk, "logo.png", png(1))
    for file in (ok, wordy, csv):
        wait_processed(sdk, file.id)

    answer = sdk.applications.generate_content(RULES_ID, inputs=inputs([ok.id]))
    assert "four words in here" in answer.suggestion

    assert refusal(sdk, RULES_ID, inputs([ok.id, ok.id, ok.id])) == ["max_files"]
    assert refusal(sdk, RULES_ID, inputs([csv.id])) == ["file_types"]
    assert refusal(sdk, RULES_ID, inputs([big.id])) == ["max_file_size_mb"]
    assert refusal(sdk, RULES_ID, inputs([wordy.id])) == ["max_word_count"]
    assert refusal(sdk, RULES_ID, inputs(["https://example.com/a.txt"])) == ["upload_types"]
    assert refusal(sdk, RULES_ID, inputs([ok.id], picture=[ok.id])) == ["file_types"]
    big_png = upload(sdk, "big.png", png(2) + b"\x00" * (1024 * 1024))
    assert refusal(sdk, RULES_ID, inputs([ok.id], picture=[big_png.id])) == ["max_image_size_mb"]
    # A media input on a provider without image support: 400 before any call is made.
    assert refusal(sdk, VISION_ID, [{"id": "picture", "value": [image.id]}]) == ["provider_images"]


def test_a_file_that_fails_processing_fails_the_call_clearly(client: writerai.Writer) -> None:
    broken = upload(client, "broken.docx", b"PK\x03\x04 this is no zip archive")
    try:
        job = client.applications.jobs.create(SUMMARY_ID, inputs=inputs([broken.id]))
    except writerai.BadRequestError as exc:  # processing had already failed: refused at once
        [item] = check_envelope(exc, 400, "BadRequest")
        assert item["extras"]["rule"] == "file_failed"
    else:  # accepted while in progress: the job waited, then failed with the reason
        done = wait_for(client, job.id)
        assert done.status == "failed", done
        assert "could not be processed" in (done.error or "")
    assert wait_processed(client, broken.id).status == "failed"


def test_media_inputs_reach_the_model_as_image_url_parts(
    tmp_path: Path, fake_llm: Callable[..., FakeLLM]
) -> None:
    llm = fake_llm()
    folder = tmp_path / "agents"
    write_agent(folder, "vision.yaml", VISION_AGENT.replace("provider: blind", "provider: eyes"))
    running = CopydeskServer(
        tmp_path / "data", agents=[folder], env=llm.provider_env("EYES", options__images="true")
    ).start()
    try:
        sdk = running.client()
        image = png(7)
        uploaded = upload(sdk, "chart.png", image)
        job = sdk.applications.jobs.create(
            VISION_ID, inputs=[{"id": "picture", "value": [uploaded.id]}]
        )
        assert wait_for(sdk, job.id).status == "completed"
        request = llm.stats(arrivals=False)["last_request"]
        [message] = request["body"]["messages"]
        text, picture = message["content"]
        assert text == {"type": "text", "text": "Describe the picture."}
        assert picture["type"] == "image_url"
        assert picture["image_url"]["url"] == (
            "data:image/png;base64," + base64.b64encode(image).decode()
        )
    finally:
        running.stop()
