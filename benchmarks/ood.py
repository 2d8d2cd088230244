"""Does the model know what it does not know? Bits/dim of other data, and the AUROC of using it.

    python benchmarks/ood.py --model checkpoints/mnist [--write]

For a model: bits/dim (its training noise added, no label) of 300 held-out images of each bundled
dataset fitted to the model as the app's Invert tab fits an upload, of its own samples and of
synthetic sets, with the AUROC of "more bits/dim = out of distribution" against its own held-out
images. The same table, scored two-sided ("far from the typical bits/dim, either way", one image
and batches of 8), shows what a typicality test adds. ``--write`` stores the numbers beside the
checkpoint as ood.npz, which the app's Likelihood tab reads instead of recomputing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import oodcache  # noqa: E402
from tarflow import ood  # noqa: E402
from tarflow.hub import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--write", action="store_true", help="store ood.npz in the model's folder")
    args = p.parse_args()
    model = load_model(args.model)
    t = time.time()
    table = oodcache.build(model)
    print(f"{args.model}: {oodcache.PER_SET} images per set, built in {time.time() - t:.0f}s")
    for note in table.notes:
        print("  skipped", note)
    own = table.totals(oodcache.OWN)
    print(f"{'set':14s} {'n':>4s} {'median':>7s} {'IQR':>13s} {'AUROC':>6s} {'typ. 1':>7s} {'typ. 8':>7s}")
    for name in table.parts:
        v = table.totals(name)
        q1, q3 = np.percentile(v, [25, 75])
        row = f"{name:14s} {v.size:4d} {np.median(v):7.3f} {q1:6.3f}-{q3:6.3f}"
        if name != oodcache.OWN:
            row += (f" {table.auroc(name):6.3f} {ood.typicality_auroc(own, v, 1):7.3f}"
                    f" {ood.typicality_auroc(own, v, 8):7.3f}")
        print(row)
    if args.write:
        path = Path(args.model) / oodcache.FILE
        table.save(path, oodcache.fingerprint(model))
        print("wrote", path)


if __name__ == "__main__":
    main()
