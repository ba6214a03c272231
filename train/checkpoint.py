"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-safe contents, resume state.

A checkpoint is a dict of tensors and plain data only (str, int, float, bool, None, lists,
dicts). Keys (``FORMAT`` version 1):

- ``format`` ("haloscope-train"), ``version`` (1), ``haloscope_version``;
- ``model``: the unwrapped model's state_dict (incl. buffers ``meta_mean``/``meta_std``);
- ``ema_model`` (only with ``--ema-decay``): the moving average of the weights
  (``train.ema``), a state_dict with ``model``'s keys; inference loads it when present;
- ``model_args``: kwargs of ``build_model`` (arch, meta_cols, meta_mean, meta_std, dropout,
  drop_path_rate);
- ``optimizer``, ``scheduler``: their state_dicts;
- ``progress``: ``epoch`` (0-based, the epoch in progress), ``step_in_epoch`` (optimiser
  steps done in it), ``global_step``, ``world_size``;
- ``loader``: the train reader's ``state_dict()``;
- ``rng``: ``torch`` (ByteTensor), ``cuda`` (list of ByteTensors), ``numpy`` (dict),
  ``python`` (dict), ``augment`` (ByteTensor of the augmentation generator);
- ``early_stopping``: the ``EarlyStopping`` state; ``val_metrics``: latest validation dict;
- ``config``: the resolved ``TrainConfig`` as a JSON string;
- ``preprocess``: the train manifest's preprocessing settings (dict); ``meta``: cols, mean, std.

``CheckpointWriter`` takes the writes off the training step's path. On CUDA the main thread
only snapshots the state on the device (copies into device buffers kept for the next save,
queued in stream order: milliseconds); a background thread waits for that snapshot, copies
it to pinned host buffers on a side stream (so the transfer overlaps the next steps) and
writes the file with ``save_checkpoint``. On CPU the state is cloned on the main thread.
When one state goes to several files (last.pt and best.pt) it is serialised once and the
other files are hard links to it (``atomic.atomic_link``; a copy where the file system has
no links): every write replaces a folder entry, never the bytes, so a later last.pt leaves
best.pt as it was. One write is in flight at a time; its error is raised by the next
``save`` or by ``join``, as the same exception a direct write would have raised.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloscope import __version__
from haloscope.atomic import atomic_link, atomic_open
from haloscope.errors import CheckpointError, ConfigError
from haloscope.train.failures import WriteErrors
from haloscope.train.model import build_model

__all__ = [
    "FORMAT",
    "VERSION",
    "capture_rng",
    "restore_rng",
    "save_checkpoint",
    "to_plain",
    "load_checkpoint",
    "load_for_inference",
    "to_host",
    "snapshot",
    "CheckpointWriter",
]

log = logging.getLogger(__name__)

FORMAT, VERSION = "haloscope-train", 1
_REQUIRED = ("model", "model_args", "config", "preprocess", "meta")
# plain-data entries that may pick up numpy scalars from metrics or readers
_PLAIN_KEYS = ("loader", "early_stopping", "val_metrics", "model_args", "preprocess", "meta")


def capture_rng(aug_gen: torch.Generator | None) -> dict[str, Any]:
    """Every RNG state as tensors and plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
        "augment": aug_gen.get_state() if aug_gen is not None else None,
    }


def restore_rng(state: dict[str, Any], aug_gen: torch.Generator | None) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if aug_gen is not None and state["augment"] is not None:
        aug_gen.set_state(state["augment"])


def to_plain(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into types ``weights_only`` loads."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (``haloscope.atomic``: temp sibling, fsync, rename, umask).

    Args:
        path: destination (e.g. ``RUN/last.pt``).
        payload: checkpoint dict (see the module docstring).

    Returns:
        The destination path.

    Raises:
        OSError: naming ``path`` (full disk, read-only folder); ``path`` is left as it was.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "haloscope_version": __version__,
        **{k: to_plain(v) if k in _PLAIN_KEYS else v for k, v in payload.items()},
    }
    with atomic_open(path, "wb") as handle:
        sink = WriteErrors(handle)
        try:
            torch.save(payload, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None
    return path


def to_host(value: Any, pinned: dict[tuple, torch.Tensor]) -> Any:
    """A copy of ``value`` (nested dicts/lists/tuples of tensors and plain data) on the host.

    Device tensors are copied without blocking into pinned buffers kept in ``pinned`` (by
    their place in the structure, reused by the next call); CPU tensors are cloned. The
    copies are queued in stream order, so they hold the values of this moment even though
    later steps change the state: wait for the stream (an event) before reading them.
    """
    return _copy_into(value, pinned, (), host=True)


def snapshot(value: Any, buffers: dict[tuple, torch.Tensor]) -> Any:
    """``value`` with every tensor copied into a buffer of ``buffers`` on its own device.

    The copies are queued in stream order (device tensors) or made now (CPU tensors), so the
    result holds the values of this moment while later steps change the state; the buffers
    are kept by their place in the structure and reused by the next call.
    """
    return _copy_into(value, buffers, (), host=False)


def _copy_into(value: Any, buffers: dict[tuple, torch.Tensor], key: tuple, *, host: bool) -> Any:
    """``to_host`` (``host``: pinned host buffers, CPU tensors cloned) or ``snapshot``
    (buffers on each tensor's own device) of ``value``; ``key`` is its place in the
    structure, the key of its buffer."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if host and value.device.type == "cpu":
            return value.clone()
        device = torch.device("cpu") if host else value.device
        buf = buffers.get(key)
        if buf is None or (buf.device, buf.shape, buf.stride(), buf.dtype) != (
            device,
            value.shape,
            value.stride(),
            value.dtype,
        ):
            buf = torch.empty_strided(
                value.shape, value.stride(), dtype=value.dtype, device=device, pin_memory=host
            )
            buffers[key] = buf
        return buf.copy_(value, non_blocking=True)
    if isinstance(value, dict):
        return {k: _copy_into(v, buffers, (*key, k), host=host) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(
            _copy_into(v, buffers, (*key, i), host=host) for i, v in enumerate(value)
        )
    return value


class CheckpointWriter:
    """Checkpoint writes in a background thread, one at a time (see the module doc)."""

    def __init__(self) -> None:
        self._device_buffers: dict[tuple, torch.Tensor] = {}
        self._pinned: dict[tuple, torch.Tensor] = {}
        self._stream: torch.cuda.Stream | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(
        self, paths: Sequence[Path], payload: Callable[[], dict[str, Any]], device: torch.device
    ) -> None:
        """Snapshot ``payload()`` now and write it to every path in the background.

        Waits for the previous write first (its buffers are reused).

        Args:
            paths: the files to write (the first is serialised, the others link to it).
            payload: builds the checkpoint dict (its tensors may live on ``device``).
            device: the training device, on whose current stream the snapshot is queued.

        Raises:
            OSError: the previous write failed (naming its file), as ``save_checkpoint``.
        """
        self.join()
        ready = None
        if device.type == "cuda":
            state = snapshot(payload(), self._device_buffers)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(device))  # after the snapshot copies
            if self._stream is None:
                self._stream = torch.cuda.Stream(device)
        else:
            state = to_host(payload(), self._pinned)  # CPU tensors: clones, made now
        self._thread = threading.Thread(
            target=self._write,
            args=(list(paths), state, ready),
            name="checkpoint-writer",
            daemon=True,
        )
        self._thread.start()

    def _write(self, paths: list[Path], state: dict[str, Any], ready: Any) -> None:
        try:
            if ready is not None:
                assert self._stream is not None
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(ready)  # the snapshot is complete
                    state = to_host(state, self._pinned)
                self._stream.synchronize()
            first, *others = paths
            save_checkpoint(first, state)
            for path in others:
                atomic_link(first, path)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by join()
            self._error = exc

    def join(self) -> None:
        """Wait for the write in flight; re-raise its error (once).

        Raises:
            OSError: as ``save_checkpoint`` (full disk, read-only folder), naming the file.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, *, raising: bool = True) -> None:
        """``join``; with ``raising=False`` (another error is on its way) only log a failure."""
        try:
            self.join()
        except Exception as exc:
            if raising:
                raise
            log.error("the last checkpoint write failed too: %s", exc)


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in one line, without torch's advice to unpickle it."""
    text = str(exc)
    foreign = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if foreign:  # NOTE: loading it would run its code; haloscope never does (weights_only=True)
        return (
            f"checkpoint {path} is not a haloscope checkpoint: it holds Python objects "
            f"({foreign.group(1)}), not only tensors and plain data"
        )
    if path.stat().st_size == 0:
        return f"checkpoint {path} is unreadable or corrupt: the file is empty"
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # torch.save's zip format, which haloscope writes
            return f"checkpoint {path} is unreadable or corrupt: not a torch checkpoint file"
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.strip().split("\n")[0])
    return (
        f"checkpoint {path} is unreadable or corrupt: {first.split('. ')[0] or type(exc).__name__}"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or not a haloscope checkpoint
            (one line: never torch's advice to load with ``weights_only=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(_load_failure(path, exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a haloscope training checkpoint (no format={FORMAT!r} entry)"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload.get('version')}; "
            f"this haloscope reads {VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}")
    return payload


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained model for scoring: with the moving average of the weights
    (``ema_model``) when the run kept one (``--ema-decay``; validation chose best.pt by it),
    else with its weights (``model``).

    Args:
        path: ``best.pt`` or ``last.pt``.
        device: where to put the model.

    Returns:
        ``(model, info)``: the model in eval mode (fp32) on ``device``, taking images
        (B, 3, 64, 64) normalised as the shards are and raw meta (B, M) in
        ``info["meta_cols"]`` order; ``info`` has ``arch``, ``meta_cols``, ``meta_mean``,
        ``meta_std``, ``preprocess`` (the train manifest's settings), ``config`` (dict),
        ``epoch``, ``global_step``, ``val_metrics``, ``path``, ``weights`` (``ema_model``
        or ``model``: the key the weights came from).

    Raises:
        CheckpointError: missing, corrupt or mismatched checkpoint.
    """
    payload = load_checkpoint(path)
    args = dict(payload["model_args"])
    try:
        model = build_model(**args)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model: {exc}") from None
    weights = "ema_model" if "ema_model" in payload else "model"
    if weights == "ema_model":
        log.info("%s: loading the moving average of the weights (ema_model)", path)
    try:
        model.load_state_dict(payload[weights], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path}: weights do not match {args['arch']}: {first}"
        ) from None
    model.to(device).eval()
    progress = payload.get("progress", {})
    info = {
        "path": str(path),
        "arch": args["arch"],
        "meta_cols": list(args["meta_cols"]),
        "meta_mean": list(args["meta_mean"]),
        "meta_std": list(args["meta_std"]),
        "preprocess": payload["preprocess"],
        "config": json.loads(payload["config"]),
        "epoch": progress.get("epoch"),
        "global_step": progress.get("global_step"),
        "val_metrics": payload.get("val_metrics"),
        "weights": weights,
    }
    return model, info
