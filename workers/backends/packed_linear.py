"""oneDNN linear layers with weights packed once at load time (CPU, float32).

torch's float32 `Linear` on CPU calls the BLAS it was built with (MKL in the x86 wheels) and
hands it the weight in its plain layout on every call. oneDNN can reorder a weight once into the
blocked layout its kernels read, and its float32 kernels run faster than MKL's on some CPUs, an
AMD EPYC (Zen 2, AVX2) among them (docs/benchmarks.md, "Optimisations"). Where it is not faster,
a replica keeps torch's layers: `cpu_linear` auto measures (workers/backends/probes.py).

`PackedLinears(model)` packs every `nn.Linear` of a model and can switch the model between the
packed layers and the original ones (to compare them), then `keep_packed()` drops the originals
(a weight tied to another module, such as the masked-LM decoder's to the word embeddings, stays
alive there) or `keep_torch()` drops the packed copies.

Packed layers only run under `torch.inference_mode()` (the backend runs every pass so) and only
on float32 CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch


def onednn_linear_available() -> bool:
    """True when this torch build has oneDNN and its packed linear operators."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        and ops is not None
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(torch.nn.Module):
    """y = x W^T + b with W packed for oneDNN once; any number of leading dimensions."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        if linear.weight.dtype != torch.float32 or linear.weight.device.type != "cpu":
            raise ValueError(
                f"only float32 CPU weights are packed, not {linear.weight.dtype} on {linear.weight.device}"
            )
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.inference_mode():
            # The batch-size hint is None: one packed weight serves every number of rows.
            self._weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self._bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(rows, self._weight, self._bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


class PackedLinears:
    """Every `nn.Linear` of a model, packed, with a switch between the two sets of layers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._slots: list[tuple[torch.nn.Module, str, torch.nn.Module, torch.nn.Module]] = []
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is torch.nn.Linear:
                    self._slots.append((parent, name, child, PackedLinear(child)))

    def __len__(self) -> int:
        return len(self._slots)

    def use_packed(self) -> None:
        for parent, name, _, packed in self._slots:
            setattr(parent, name, packed)

    def use_torch(self) -> None:
        for parent, name, original, _ in self._slots:
            setattr(parent, name, original)

    def keep_packed(self) -> None:
        """Serve with the packed layers from now on; the originals are let go."""
        self.use_packed()
        self._slots.clear()

    def keep_torch(self) -> None:
        """Serve with torch's layers from now on; the packed copies are let go."""
        self.use_torch()
        self._slots.clear()


def count_packed(model: Any) -> int:
    """How many of the model's layers are packed (reports and tests)."""
    return sum(isinstance(m, PackedLinear) for m in model.modules())
