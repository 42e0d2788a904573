"""Training data in memory: records checked for finite values and batched as torch tensors.

``check_finite_records`` guards training against a data file with a NaN weight or potential
(it names the file and the instance); ``NeuralDataset`` holds the records as float32 tensors
(the weights also in float64 for the dual-gap terms), batched by equal N.
"""

from __future__ import annotations

import numpy as np

from deepquant.neural.data import touching_mask

__all__ = ["NeuralDataset", "check_finite_records"]


def check_finite_records(records: list[dict], path) -> None:
    """Raise ``ValueError`` naming the file and the first instance with a non-finite weight or
    time, or a non-finite potential where it is used (``v_valid`` / ``h_valid``). A record's
    own ``source`` file, when it has one (``read_datasets``), is named instead of ``path``."""
    for r in records:
        src = r.get("source", path)
        for key, mask in (("weights", None), ("times", None), ("v", "v_valid"),
                          ("h", "h_valid")):
            a = np.asarray(r[key])
            bad = ~np.isfinite(a)
            if mask is not None:
                bad &= np.asarray(r[mask], dtype=bool)
            if bad.any():
                raise ValueError(
                    f"data file {str(src)!r}: instance {r['index']} has {int(bad.sum())} "
                    f"non-finite {key} value(s); run 'deepquant validate-data {src}'")


class NeuralDataset:
    """Records held in memory as float32 tensors (the weights also in float64, for the dual-gap
    terms), batched by equal N (no padding needed)."""

    def __init__(self, records: list[dict], grid: np.ndarray) -> None:
        import torch

        self.grid = torch.as_tensor(grid, dtype=torch.float32)
        self.grid64 = torch.as_tensor(grid, dtype=torch.float64)
        self.items = []
        for r in records:
            self.items.append({
                "weights": torch.as_tensor(r["weights"], dtype=torch.float32),
                "weights64": torch.as_tensor(r["weights"], dtype=torch.float64),
                "labelled": bool(r.get("labelled", True)),
                "v": torch.as_tensor(r["v"], dtype=torch.float32),
                "h": torch.as_tensor(r["h"], dtype=torch.float32),
                "h_valid": torch.as_tensor(r["h_valid"], dtype=torch.bool),
                "v_valid": torch.as_tensor(r["v_valid"], dtype=torch.bool),
                "period_ok": torch.as_tensor(r["period_ok"], dtype=torch.bool),
                "touch": torch.as_tensor(touching_mask(r["weights"], grid)),
                "n": r["n_periods"], "family": r["family"], "index": r["index"],
            })

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None):
        """Lists of item positions with equal N; shuffled when ``rng`` is given."""
        by_n: dict[int, list[int]] = {}
        for i, it in enumerate(self.items):
            by_n.setdefault(it["n"], []).append(i)
        out = []
        for ids in by_n.values():
            ids = list(rng.permutation(ids)) if rng is not None else ids
            out += [ids[j:j + batch_size] for j in range(0, len(ids), batch_size)]
        if rng is not None:
            out = [out[j] for j in rng.permutation(len(out))]
        return out

    def collate(self, ids: list[int]) -> dict:
        import torch

        its = [self.items[i] for i in ids]
        b = {k: torch.stack([it[k] for it in its]) for k in ("weights", "weights64", "v", "h",
                                                               "h_valid", "v_valid", "touch")}
        b["period_mask"] = torch.stack([it["period_ok"] for it in its])
        b["date_mask"] = torch.ones(len(its), its[0]["n"] + 1, dtype=torch.bool)
        b["grid"] = self.grid
        b["grid64"] = self.grid64
        b["labelled"] = all(it["labelled"] for it in its)
        return b
