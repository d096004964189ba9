"""The activation store: a zarr v3 group (the contract is in docs/architecture.md).

Layout
    tokens          int32  [n_seq, seq_len]
    doc, offset     int64  [n_seq]        where each sequence came from
    valid           bool   [n_seq]        False for sequences dropped for non-finite values
    hooks/<name>    [n_seq, seq_len, d]   float16 / float32, or bfloat16 stored as raw uint16
    progress        int64  [n_shards]     whole chunks committed by each shard (the commit log)

Every array is chunked by `chunk_seqs` whole sequences. Shard i of n owns a contiguous range
of chunks and commits them in order; a chunk counts only once `progress[i]` has moved past
it, which happens after all of its arrays are written. So a killed writer loses at most the
chunk in flight, and a resumed one rewrites exactly that chunk. A committed chunk whose file is
missing or unreadable is an error when read (never zeros), and a resumed harvest rewrites it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from saelab.base.errors import UserError

FORMAT_VERSION = 1
_REPAIR = "resume the harvest to recompute it"
STORAGE_DTYPES = {
    # name: (zarr dtype, torch dtype of the values)
    "float16": ("float16", torch.float16),
    "bfloat16": ("uint16", torch.bfloat16),
    "float32": ("float32", torch.float32),
}


def _codec():
    from zarr.codecs import BloscCodec

    # lz4 with byte shuffle: fast to write and read; activations barely compress anyway.
    return BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")


def open_group(url: str, mode: str):
    """Open a zarr group at a path or fsspec URL; failures become one-line `UserError`s."""
    import zarr

    # file:// URLs go to zarr's LocalStore (atomic writes, creates parent folders).
    location = url[len("file://") :] if url.startswith("file://") else url
    try:
        return zarr.open_group(store=location, mode=mode, zarr_format=3)
    except FileNotFoundError:
        if mode == "r":
            raise UserError(f"no activation store at {url!r}") from None
        raise UserError(f"cannot create a store at {url!r}: its location does not exist") from None
    except PermissionError:
        raise UserError(
            f"cannot write to {url!r}: permission denied; choose another --out"
        ) from None
    except OSError as err:
        raise UserError(f"cannot open store {url!r}: {err.strerror or err}") from None


def existing_attrs(url: str) -> dict | None:
    """The attributes of the saelab store at `url`, or None where nothing (or an empty folder)
    is there. Anything else there (a file, a folder with files in it, a zarr group that is not
    a saelab store) raises a `UserError`: writing a store there would delete it."""
    try:
        group = open_group(url, mode="r")
    except UserError:
        if _holds_something(url):
            raise UserError(_NOT_A_STORE.format(url=url)) from None
        return None
    attrs = dict(group.attrs)
    if "format_version" not in attrs:
        raise UserError(_NOT_A_STORE.format(url=url))
    return attrs


_NOT_A_STORE = (
    "{url!r} exists and is not a saelab activation store; nothing was changed: choose another "
    "--out (--overwrite replaces only a saelab store)"
)


def _holds_something(url: str) -> bool:
    """Whether `url` is a file or a non-empty folder (a location zarr's mode "w" would wipe)."""
    import fsspec

    location = url[len("file://") :] if url.startswith("file://") else url
    try:
        fs, path = fsspec.core.url_to_fs(location)
        if fs.isfile(path):
            return True
        return fs.isdir(path) and bool(fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        # Cannot tell what is there: refuse rather than risk deleting it.
        raise UserError(f"cannot inspect {url!r}: {err.strerror or err}") from None


def shard_chunks(n_chunks: int, shard: int, n_shards: int) -> range:
    """The contiguous chunk range that shard `shard` of `n_shards` owns."""
    return range(shard * n_chunks // n_shards, (shard + 1) * n_chunks // n_shards)


def create(
    url: str, attrs: dict, hooks: dict[str, int], n_seq: int, chunk_seqs: int, n_shards: int
):
    """Create an empty store (the caller has decided that overwriting is allowed).

    Only a saelab store, an empty folder or nothing is ever replaced: zarr's mode "w" deletes
    whatever is at `url`, so anything else there is refused with a `UserError`."""
    old = existing_attrs(url)
    if old is None:
        group = open_group(url, mode="w")
    else:
        # Remove only what the old store's own metadata lists (its arrays and groups): other
        # files that were put inside its folder (an SAE trained there, notes) stay.
        remove_store_nodes(open_group(url, mode="r+"))
        group = open_group(url, mode="a")
    seq_len = attrs["seq_len"]
    zdtype = STORAGE_DTYPES[attrs["dtype"]][0]
    # The attributes come first, marked `creating` until every array exists: a store killed
    # while being created is still recognised as one, and `--resume` recreates it.
    group.attrs.update(
        {
            **attrs,
            "format_version": FORMAT_VERSION,
            "n_seq": n_seq,
            "chunk_seqs": chunk_seqs,
            "n_shards": n_shards,
            "hooks": hooks,
            "committed_sequences": 0,
            "complete": False,
            "all_chunks_written": True,
            "creating": True,
        }
    )
    # Every chunk is written, even an all-zero one, so a missing chunk always means damage.
    kw = {"compressors": [_codec()], "fill_value": 0, "config": WRITE_CONFIG}
    group.create_array(
        "tokens", shape=(n_seq, seq_len), chunks=(chunk_seqs, seq_len), dtype="int32", **kw
    )
    for name in ("doc", "offset"):
        group.create_array(name, shape=(n_seq,), chunks=(chunk_seqs,), dtype="int64", **kw)
    group.create_array(
        "valid",
        shape=(n_seq,),
        chunks=(chunk_seqs,),
        dtype="bool",
        fill_value=False,
        config=WRITE_CONFIG,
    )
    for hook, width in hooks.items():
        group.create_array(
            f"hooks/{hook}",
            shape=(n_seq, seq_len, width),
            chunks=(chunk_seqs, seq_len, width),
            dtype=zdtype,
            **kw,
        )
    group.create_array("progress", shape=(n_shards,), chunks=(1,), dtype="int64", fill_value=0)
    group.attrs.update({"creating": False})
    return group


WRITE_CONFIG = {"write_empty_chunks": True}
DATA_ARRAYS = ("tokens", "doc", "offset", "valid")


def writable(group, name: str):
    """An array of `group` opened for writing every chunk (all-zero ones too)."""
    return group[name].with_config(WRITE_CONFIG)


def remove_store_nodes(group) -> None:
    """Delete the arrays and groups that a store's metadata lists, and nothing else."""
    from zarr.core.sync import sync

    store, root = group.store, group.store_path.path
    prefix = f"{root}/" if root else ""
    for path, node in sorted(group.members(max_depth=None), key=lambda m: -m[0].count("/")):
        if hasattr(node, "shape"):
            sync(store.delete_dir(prefix + path))
        else:
            sync(store.delete(f"{prefix}{path}/zarr.json"))
    sync(store.delete(f"{prefix}zarr.json"))


def free_bytes(url: str) -> int | None:
    """Free disk space where a local store would go (None for remote locations)."""
    import shutil
    from pathlib import Path

    location = url[len("file://") :] if url.startswith("file://") else url
    if "://" in location:
        return None
    path = Path(location).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return usage.free if usage.total else None  # pseudo file systems report no size


def enclosing_store(path: str) -> str | None:
    """The saelab activation store that holds local `path` (or is it), if any."""
    from pathlib import Path

    location = path[len("file://") :] if path.startswith("file://") else path
    if "://" in location:
        return None
    here = Path(location).expanduser().absolute()
    for folder in (here, *here.parents):
        meta = folder / "zarr.json"
        if meta.is_file():
            try:
                import json

                attrs = json.loads(meta.read_text()).get("attributes", {})
            except (OSError, ValueError):
                continue
            if "format_version" in attrs and "hooks" in attrs:
                return str(folder)
    return None


def refuse_inside_store(path: str, what: str = "an output") -> None:
    """`UserError` when `path` lies inside an activation store (overwriting the store would
    delete it, and the store's readers would trip over it)."""
    store = enclosing_store(path)
    if store is not None:
        raise UserError(
            f"{path!r} is inside the activation store {store!r}; put {what} outside the store"
        )


def to_storage(acts: torch.Tensor, dtype: str) -> np.ndarray:
    """Cast float32 activations to the stored representation."""
    torch_dtype = STORAGE_DTYPES[dtype][1]
    cast = acts.to(torch_dtype)
    if dtype == "bfloat16":
        return cast.view(torch.int16).numpy().view(np.uint16)
    return cast.numpy()


def from_storage(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored representation back to a torch tensor of its value dtype (no copy where possible)."""
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


@dataclass
class ActivationStore:
    """Read access to a harvested store."""

    url: str

    def __post_init__(self) -> None:
        self.group = open_group(self.url, mode="r")
        attrs = dict(self.group.attrs)
        version = attrs.get("format_version")
        if version is None:
            raise UserError(f"{self.url!r} is a zarr group but not a saelab activation store")
        if version > FORMAT_VERSION:
            raise UserError(
                f"store {self.url!r} has format {version}, newer than this saelab ({FORMAT_VERSION}); upgrade saelab"
            )
        self.attrs = attrs

    @property
    def hooks(self) -> dict[str, int]:
        return dict(self.attrs["hooks"])

    @property
    def seq_len(self) -> int:
        return int(self.attrs["seq_len"])

    @property
    def chunk_seqs(self) -> int:
        return int(self.attrs["chunk_seqs"])

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.attrs["n_seq"] / self.chunk_seqs)

    def width(self, hook: str) -> int:
        self.check_hook(hook)
        return int(self.hooks[hook])

    def check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise UserError(
                f"hook {hook!r} is not in store {self.url!r}; it holds: {', '.join(self.hooks)}"
            )

    def committed_chunks(self) -> list[int]:
        """Indices of the chunks whose data is durable, in order."""
        progress = self.group["progress"][:]
        n_shards = len(progress)
        chunks: list[int] = []
        for shard, done in enumerate(progress):
            owned = shard_chunks(self.n_chunks, shard, n_shards)
            chunks.extend(owned[: int(done)])
        return chunks

    def chunk_rows(self, chunk: int) -> slice:
        start = chunk * self.chunk_seqs
        return slice(start, min(start + self.chunk_seqs, int(self.attrs["n_seq"])))

    def committed_sequences(self) -> int:
        return sum(
            self.chunk_rows(c).stop - self.chunk_rows(c).start for c in self.committed_chunks()
        )

    def read_tokens(self, chunk: int) -> np.ndarray:
        return self._read("tokens", chunk)

    def read_valid(self, chunk: int) -> np.ndarray:
        return self._read("valid", chunk)

    def checked_arrays(self) -> list[str]:
        """Arrays whose chunks must exist once committed (stores written before every chunk
        was written, all-zero ones included, only guarantee tokens and activations)."""
        hooks = [f"hooks/{h}" for h in self.hooks]
        if self.attrs.get("all_chunks_written"):
            return [*DATA_ARRAYS, *hooks]
        return ["tokens", *hooks]

    def chunk_key(self, name: str, chunk: int) -> str:
        arr = self.group[name]
        coords = (chunk,) + (0,) * (len(arr.shape) - 1)
        return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"

    def chunk_problem(self, chunk: int, decode: bool = True) -> str | None:
        """What is wrong with a committed chunk's files (None: all present and readable)."""
        from zarr.core.sync import sync

        for name in self.checked_arrays():
            key = self.chunk_key(name, chunk)
            if not sync(self.group.store.exists(key)):
                return f"chunk {chunk} of {name} ({key}) is missing"
            if decode:
                try:
                    self.group[name][self.chunk_rows(chunk)]
                except Exception as err:  # a codec or I/O error: the file is damaged
                    return f"chunk {chunk} of {name} ({key}) is unreadable ({type(err).__name__})"
        return None

    def _read(self, name: str, chunk: int) -> np.ndarray:
        """Read one chunk; a committed chunk whose file is missing or damaged is an error
        (zarr would otherwise return zeros for a missing chunk)."""
        committed = chunk in self._committed_set()
        try:
            values = self.group[name][self.chunk_rows(chunk)]
        except Exception:
            problem = self.chunk_problem(chunk) or f"chunk {chunk} of {name} is unreadable"
            raise UserError(f"store {self.url!r} is damaged: {problem}; {_REPAIR}") from None
        if committed and name in self.checked_arrays():
            from zarr.core.sync import sync

            key = self.chunk_key(name, chunk)
            if not sync(self.group.store.exists(key)):
                raise UserError(
                    f"store {self.url!r} is damaged: chunk {chunk} of {name} ({key}) is "
                    f"missing; {_REPAIR}"
                )
        return values

    def _committed_set(self) -> set[int]:
        if not hasattr(self, "_committed"):
            self._committed = set(self.committed_chunks())
        return self._committed

    def token_mask(
        self, chunk: int, mask_bos: bool = True, mask_special: bool = True
    ) -> np.ndarray:
        """Bool `[chunk_seqs, seq_len]`: True where a token is a training/eval row.

        False at the BOS position (when the store prepended one), at special tokens, and over
        sequences marked invalid (dropped for non-finite activations).
        """
        tokens = self.read_tokens(chunk)
        masked = set(self.attrs.get("special_token_ids", [])) if mask_special else set()
        if mask_bos and self.attrs.get("bos_token_id") is not None:
            masked.add(int(self.attrs["bos_token_id"]))
        keep = ~np.isin(tokens, np.array(sorted(masked), dtype=np.int64))
        if mask_bos and self.attrs.get("bos") == "prepend":
            keep[:, 0] = False
        return keep & self.read_valid(chunk)[:, None]

    def read_acts(self, hook: str, chunk: int) -> torch.Tensor:
        """One chunk of activations `[chunk_seqs, seq_len, d]` in the stored value dtype."""
        raw = self._read(f"hooks/{hook}", chunk)
        return from_storage(raw, self.attrs["dtype"])

    def layout(self, hook: str) -> list[int]:
        """The per-token shape of a hook's values (`[d]`, or `[n_heads, d_head]` for per-head
        hooks, which are stored flattened to `n_heads * d_head`)."""
        self.check_hook(hook)
        return list(
            self.attrs.get("hook_layout", {}).get(hook, {}).get("shape", [self.width(hook)])
        )
