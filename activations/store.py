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
chunk in flight, and a resumed one rewrites exactly that chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from saelab_base.errors import UserError

FORMAT_VERSION = 1
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
    existing_attrs(url)
    group = open_group(url, mode="w")
    seq_len = attrs["seq_len"]
    zdtype = STORAGE_DTYPES[attrs["dtype"]][0]
    kw = {"compressors": [_codec()], "fill_value": 0}
    group.create_array(
        "tokens", shape=(n_seq, seq_len), chunks=(chunk_seqs, seq_len), dtype="int32", **kw
    )
    for name in ("doc", "offset"):
        group.create_array(name, shape=(n_seq,), chunks=(chunk_seqs,), dtype="int64", **kw)
    group.create_array(
        "valid", shape=(n_seq,), chunks=(chunk_seqs,), dtype="bool", fill_value=False
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
        }
    )
    return group


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
        return self.group["tokens"][self.chunk_rows(chunk)]

    def read_valid(self, chunk: int) -> np.ndarray:
        return self.group["valid"][self.chunk_rows(chunk)]

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
        raw = self.group[f"hooks/{hook}"][self.chunk_rows(chunk)]
        return from_storage(raw, self.attrs["dtype"])
