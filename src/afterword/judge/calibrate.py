"""Calibrating the judge on the user's own explicit feedback.

Every message that carries explicit feedback (thumbs, rating, correction) is a
labelled example of *this* application's users. ``calibrate`` re-judges those
messages with the feedback hidden, so the judge sees only what it would see
without it, and fits a small calibrator (multinomial logistic regression over
the judge's score, confidence and evidence balance) from the inferred
judgment to the explicit label. It reports stratified cross-validated UAR,
macro-F1 and accuracy before and after, and only stores the calibrator when
it is better by ``min_gain`` UAR: nothing is replaced on faith.

The calibrator lives in the store (``job_state['judge_calibrator']``), so it
travels with the data; ``judge_store`` applies it to inferred judgments
(explicit feedback still overrides, untouched).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from afterword.judge.hindsight import HindsightJudge, label_for_score
from afterword.judge.judge_config import JudgeConfig
from afterword.records import Evidence, Feedback, Judgment, Label
from afterword.store.store import Store

__all__ = ["Calibrator", "calibrate", "load_calibrator", "explicit_label"]

_KEY = "judge_calibrator"
_CLASSES = [Label.dissatisfied.value, Label.neutral.value, Label.satisfied.value]


def explicit_label(fb: Feedback) -> str | None:
    """The label an explicit feedback event states (comments carry none)."""
    if fb.kind == "correction":
        return Label.dissatisfied.value
    if fb.kind == "thumbs" and fb.thumbs:
        return Label.satisfied.value if fb.thumbs > 0 else Label.dissatisfied.value
    if fb.kind == "rating" and fb.rating is not None:
        return label_for_score((fb.rating - 3) / 2).value
    return None


def _features(j: Judgment) -> list[float]:
    pos = sum(1 for e in j.evidence if e.weight > 0)
    neg = sum(1 for e in j.evidence if e.weight < 0)
    return [j.score, j.confidence, j.score * j.confidence, float(pos), float(neg)]


@dataclass
class Calibrator:
    coef: list[list[float]]
    intercept: list[float]
    classes: list[str]
    n_train: int

    def predict_proba(self, j: Judgment) -> np.ndarray:
        z = np.asarray(self.coef) @ np.asarray(_features(j)) + np.asarray(self.intercept)
        e = np.exp(z - z.max())
        return e / e.sum()

    def apply(self, j: Judgment) -> Judgment:
        if any(e.signal.startswith("explicit") for e in j.evidence):
            return j
        p = self.predict_proba(j)
        probs = {c: float(p[i]) for i, c in enumerate(self.classes)}
        score = probs.get("satisfied", 0.0) - probs.get("dissatisfied", 0.0)
        label = max(probs, key=probs.__getitem__)
        return j.model_copy(
            update={
                "label": label,
                "score": max(-1.0, min(1.0, score)),
                "confidence": max(probs.values()),
                "evidence": [
                    *j.evidence,
                    Evidence(
                        signal="calibrated",
                        weight=score,
                        detail=f"calibrated on {self.n_train} explicit labels; raw {j.label} {j.score:+.2f}",
                    ),
                ],
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def load_calibrator(store: Store) -> Calibrator | None:
    raw = store.get_state(_KEY)
    return Calibrator(**json.loads(raw)) if raw else None


def _metrics(y: list[str], p: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    return {
        "uar": float(recall_score(y, p, labels=_CLASSES, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, p, labels=_CLASSES, average="macro", zero_division=0)),
        "acc": float(accuracy_score(y, p)),
    }


def collect(store: Store, config: JudgeConfig | None = None) -> tuple[list[Judgment], list[str]]:
    """Inferred judgments (feedback hidden) and explicit labels for every message with explicit feedback."""
    judge = HindsightJudge(config)
    items: list[Judgment] = []
    labels: list[str] = []
    for conv in store.iter_conversations():
        if not conv.feedback:
            continue
        target: dict[str, str] = {}
        for fb in conv.feedback:
            lab = explicit_label(fb)
            if lab and fb.message_id:
                target[fb.message_id] = lab  # the latest wins, as in the judge
        if not target:
            continue
        hidden = conv.model_copy(update={"feedback": []})
        for j in judge.judge_conversation(hidden):
            if j.message_id in target:
                items.append(j)
                labels.append(target[j.message_id])
    return items, labels


def calibrate(
    store: Store,
    *,
    folds: int = 5,
    min_items: int = 20,
    min_gain: float = 0.01,
    dry_run: bool = False,
    config: JudgeConfig | None = None,
) -> dict[str, Any]:
    """Fit, cross-validate and (if it helps) store a calibrator. Returns the report."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    judgments, y = collect(store, config)
    report: dict[str, Any] = {"n": len(y), "label_counts": {c: y.count(c) for c in _CLASSES}, "replaced": False}
    present = [c for c in _CLASSES if y.count(c) >= 2]
    if len(y) < min_items or len(present) < 2:
        report["reason"] = f"need at least {min_items} explicit labels in 2+ classes (have {len(y)})"
        return report
    X = np.asarray([_features(j) for j in judgments])
    ya = np.asarray(y)
    k = max(2, min(folds, min(y.count(c) for c in present)))
    raw_pred, cal_pred, truth = [], [], []
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(X, ya):
        clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(X[tr], ya[tr])
        cal_pred += list(clf.predict(X[te]))
        raw_pred += [str(judgments[i].label) for i in te]
        truth += list(ya[te])
    report["folds"] = k
    report["before"] = _metrics(truth, raw_pred)
    report["after"] = _metrics(truth, cal_pred)
    gain = report["after"]["uar"] - report["before"]["uar"]
    report["gain_uar"] = round(gain, 4)
    if gain < min_gain:
        report["reason"] = f"cross-validated UAR gain {gain:+.3f} < {min_gain}: kept the current judge"
        return report
    clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(X, ya)
    classes = [str(c) for c in clf.classes_]
    coef = clf.coef_.tolist()
    intercept = clf.intercept_.tolist()
    if len(classes) == 2:  # binary sklearn models keep one row; expand to one per class
        coef = [[-v for v in coef[0]], coef[0]]
        intercept = [-intercept[0], intercept[0]]
    cal = Calibrator(coef=coef, intercept=intercept, classes=classes, n_train=len(y))
    if not dry_run:
        store.set_state(_KEY, cal.to_json())
        report["replaced"] = True
    report["reason"] = f"cross-validated UAR gain {gain:+.3f}"
    return report
