"""An epoch's record: its line in metrics.jsonl and its entry in the checkpoint's history.

An epoch that a stop splits is one epoch in the record. The stop writes the part it ran (`partial`:
true) into the checkpoint's history; the resumed run merges the rest into it, so the finished
record has the steps, loss and accuracy of the uninterrupted epoch, and its timings count the
segments (`resumed`: how many times it was resumed).
"""

from __future__ import annotations

from train.engine import EpochResult


def epoch_record(epoch: int, result: EpochResult, done: bool, image_size: int) -> dict:
    """This run's part of `epoch` as a record (evaluation fields are added to a finished one)."""
    return {"epoch": epoch, "loss": result.loss, "img_per_s": result.img_per_s, "steps": result.steps_done,
            "partial": not done, "resumed": 0, "data_wait_fraction": result.data_wait_fraction,
            "train_s": result.train_s, "data_wait_hist": result.wait_hist, "image_size": image_size}


def continues(history: list[dict], epoch: int) -> bool:
    """Whether the last record of `history` is a part of `epoch` that a stop cut short."""
    return bool(history) and history[-1]["epoch"] == epoch and history[-1].get("partial", False)


def merged(before: dict, after: dict) -> dict:
    """One record for an epoch run as `before` (stopped) then `after` (resumed). Loss is the mean
    over all steps (each part's mean weighted by its steps); time and the data-wait histogram add
    up; img/s is the parts' rates weighted by time per step (each part's warm-up left out of its
    own timing); the data-wait share is weighted by time."""
    a, b = before["steps"], after["steps"]
    steps, train_s = a + b, before["train_s"] + after["train_s"]
    return {
        **after, "steps": steps,
        "loss": (before["loss"] * a + after["loss"] * b) / max(steps, 1),
        "img_per_s": steps / max(sum(n / r["img_per_s"] for n, r in ((a, before), (b, after)) if n), 1e-12),
        "resumed": before.get("resumed", 0) + 1, "train_s": train_s,
        "data_wait_fraction": (before["data_wait_fraction"] * before["train_s"]
                               + after["data_wait_fraction"] * after["train_s"]) / max(train_s, 1e-9),
        "data_wait_hist": [x + y for x, y in zip(before["data_wait_hist"], after["data_wait_hist"])],
    }
