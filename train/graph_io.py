"""Inputs of a graph-captured step: static device buffers fed from host batches.

A CUDA graph reads its inputs from fixed addresses. ``StaticBatch`` owns those buffers
(``static``) and a same-shaped *staging* copy. ``load`` copies a (pinned) host batch into
staging on a side stream, so the host-to-device transfer overlaps the previous replay; the
main stream then waits for that copy (a device-side wait: the host never blocks) and moves
staging into ``static`` with one device-to-device copy per field, after the previous replay
has finished reading them (stream order). Both buffer sets live as long as the step, so no
``record_stream`` is needed for them; the pinned host source is protected by the caching
host allocator, which records the copy stream on a ``non_blocking`` copy. Device sources
(synthetic batches) skip staging and are copied on the main stream.
"""

from __future__ import annotations

import torch

__all__ = ["StaticBatch"]


class StaticBatch:
    """Static input buffers of one graph plus their staging copy (see the module doc).

    Args:
        batch_size: rows of every buffer (the graph's static batch).
        specs: field name -> (per-sample shape, dtype).
        device: the CUDA device.
        pad_weight: keep a ``weight`` field that is 1 for loaded rows and 0 for padding.
    """

    def __init__(
        self,
        batch_size: int,
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
        device: torch.device,
        *,
        pad_weight: bool,
    ) -> None:
        if pad_weight:
            specs = {**specs, "weight": ((), torch.float32)}
        self.batch_size, self.device, self.pad_weight = batch_size, device, pad_weight
        self.static = {
            k: torch.zeros((batch_size, *s), dtype=d, device=device) for k, (s, d) in specs.items()
        }
        self.staging = {k: torch.zeros_like(v) for k, v in self.static.items()}
        self.copy_stream = torch.cuda.Stream(device)
        self._copied = torch.cuda.Event()
        self._staging_free = torch.cuda.Event()
        self._staging_free.record(torch.cuda.current_stream(device))

    @classmethod
    def for_batch(
        cls,
        batch_size: int,
        images: torch.Tensor,
        meta: torch.Tensor,
        device: torch.device,
        *,
        with_labels: bool,
    ) -> StaticBatch:
        """Buffers shaped like a first batch: images keep their dtype (float16 from shards)."""
        specs = {
            "images": (tuple(images.shape[1:]), images.dtype),
            "meta": (tuple(meta.shape[1:]), torch.float32),
        }
        if with_labels:
            specs["labels"] = ((), torch.float32)
        return cls(batch_size, specs, device, pad_weight=with_labels)

    def load(
        self,
        images: torch.Tensor,
        meta: torch.Tensor,
        labels: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> int:
        """Queue the copy of one batch into ``static``; returns its row count n.

        Rows n..batch_size keep old values; with ``pad_weight`` their weight is 0.

        Raises:
            ValueError: more rows than ``batch_size``, or fields of different lengths.
        """
        fields = {"images": images, "meta": meta}
        if labels is not None:
            fields["labels"] = labels
        if weight is not None:
            fields["weight"] = weight
        n = int(images.shape[0])
        if n > self.batch_size or any(int(t.shape[0]) != n for t in fields.values()):
            sizes = {k: tuple(v.shape) for k, v in fields.items()}
            raise ValueError(f"batch of {sizes} does not fit the static batch {self.batch_size}")
        main = torch.cuda.current_stream(self.device)
        if all(t.device.type == "cpu" for t in fields.values()):
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self._staging_free)  # previous D2D has read staging
                self._fill(self.staging, fields, n)
                self._copied.record(self.copy_stream)
            main.wait_event(self._copied)
            for key, buf in self.static.items():
                buf.copy_(self.staging[key])
            self._staging_free.record(main)
        else:  # device tensors (synthetic batches): produced on the main stream, copy there
            self._fill(self.static, {k: v.to(self.device) for k, v in fields.items()}, n)
        return n

    def _fill(self, bufs: dict[str, torch.Tensor], fields: dict[str, torch.Tensor], n: int) -> None:
        for key, src in fields.items():
            bufs[key][:n].copy_(src, non_blocking=True)
        if self.pad_weight:
            if "weight" not in fields:
                bufs["weight"][:n].fill_(1.0)
            bufs["weight"][n:].fill_(0.0)
