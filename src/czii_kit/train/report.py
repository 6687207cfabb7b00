"""One-screen summary at the end of a training run."""
from __future__ import annotations

import pandas as pd



def summary(result: dict) -> str:
    best, paths = result["best"], result["paths"]
    lines = ["", f"fold {paths.fold}: trained on {', '.join(result['train_runs'])}"
             + (f"; validated on {', '.join(result['val_runs'])}" if result["val_runs"] else "; no validation run")]
    if best.get("per_class"):
        classes = list(best["thresholds"])
        table = pd.DataFrame(best["per_class"]).set_index("particle_type").reindex(classes)
        table["threshold"] = [best["thresholds"][c] for c in classes]
        cols = ["weight", "threshold", "tp", "fp", "fn", "precision", "recall", "f4"]
        lines += [f"best epoch {best['epoch']}: F4 = {best['score']:.4f}",
                  table[cols].reset_index().to_string(index=False, float_format="%.3f")]
    if best.get("thresholds_from"):
        lines.append(f"thresholds: {best['thresholds_from']}")
    lines += ["files:", f"  checkpoint  {paths.best}", f"  resume      {paths.last}", f"  log         {paths.log}",
              f"  curve       {paths.curve}", f"  config      {paths.config}"]
    return "\n".join(lines)
