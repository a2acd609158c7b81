"""Classification metrics against a hand-computed example and against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputRejected
from pipeline.metrics.classification import classify, confusion_matrix, top_k_hits

# 3 classes, 6 samples; the comment says the argmax and the top-2 classes
LOGITS = [
    [2.0, 1.0, 0.1],  # true 0: predicted 0 (right)
    [0.5, 1.5, 1.0],  # true 0: predicted 1, top-2 {1, 2} misses 0
    [0.2, 3.0, 0.1],  # true 1: predicted 1 (right)
    [1.0, 0.9, 0.0],  # true 1: predicted 0, top-2 {0, 1} holds 1
    [0.0, 0.1, 2.0],  # true 2: predicted 2 (right)
    [0.3, 1.0, 0.8],  # true 2: predicted 1, top-2 {1, 2} holds 2
]
LABELS = [0, 0, 1, 1, 2, 2]


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_hand_computed_example():
    m = classify(LOGITS, LABELS, top_k=(1, 2, 3), class_names=["cat", "dog", "fox"])
    assert m["num_samples"] == 6 and m["num_classes"] == 3
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["top_k"] == pytest.approx({"1": 3 / 6, "2": 5 / 6, "3": 1.0})
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    # precision = TP / column sum (2, 3, 1 predictions), recall = TP / row sum (2 each)
    pc = m["per_class"]
    assert [pc[n]["precision"] for n in ("cat", "dog", "fox")] == pytest.approx([1 / 2, 1 / 3, 1.0])
    assert [pc[n]["recall"] for n in ("cat", "dog", "fox")] == pytest.approx([1 / 2, 1 / 2, 1 / 2])
    assert [pc[n]["f1"] for n in ("cat", "dog", "fox")] == pytest.approx([1 / 2, 2 / 5, 2 / 3])
    assert [pc[n]["support"] for n in ("cat", "dog", "fox")] == [2, 2, 2]
    assert [pc[n]["predicted"] for n in ("cat", "dog", "fox")] == [2, 3, 1]
    # (1/2 + 2/5 + 2/3) / 3
    assert m["macro_f1"] == pytest.approx(47 / 90)


def test_probabilities_give_the_same_metrics_as_logits():
    from_logits = classify(LOGITS, LABELS, top_k=(1, 2))
    from_probs = classify(_softmax(LOGITS), LABELS, top_k=(1, 2))
    assert from_probs["accuracy"] == from_logits["accuracy"]
    assert from_probs["confusion_matrix"] == from_logits["confusion_matrix"]
    assert from_probs["top_k"] == from_logits["top_k"]
    assert from_probs["macro_f1"] == pytest.approx(from_logits["macro_f1"])
    assert from_probs["per_class"] == from_logits["per_class"]


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    m = classify(torch.tensor(LOGITS, requires_grad=True), torch.tensor(LABELS), top_k=(2,))
    assert m["accuracy"] == pytest.approx(0.5) and m["top_k"] == {"2": pytest.approx(5 / 6)}


def test_ties_go_to_the_lower_class_index_in_argmax_and_top_k():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    labels = np.array([1, 1])
    m = classify(scores, labels, top_k=(1, 2))
    assert m["accuracy"] == 0.5  # row 0 predicts class 0 (tie), row 1 predicts class 1 (tie)
    assert m["top_k"]["1"] == m["accuracy"]
    assert top_k_hits(scores, labels, 1).tolist() == [False, True]
    assert m["top_k"]["2"] == 1.0


def test_k_at_least_the_class_count_is_perfect():
    assert classify(LOGITS, LABELS, top_k=(3, 10))["top_k"] == {"3": 1.0, "10": 1.0}


def test_macro_f1_leaves_out_classes_absent_from_labels_and_predictions():
    # 4 classes; class 3 is never the truth and never predicted
    scores = np.array([[5.0, 0, 0, -9], [0, 5.0, 0, -9], [0, 0, 5.0, -9], [5.0, 0, 0, -9]])
    labels = np.array([0, 1, 2, 2])
    m = classify(scores, labels, top_k=(1,))
    f1 = [m["per_class"][str(i)]["f1"] for i in range(4)]
    assert f1 == pytest.approx([2 / 3, 1.0, 2 / 3, 0.0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 2 / 3) / 3)
    assert m["per_class"]["3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}


def test_a_class_never_predicted_has_zero_precision_not_nan():
    scores = np.array([[1.0, 0.0], [1.0, 0.0]])
    m = classify(scores, [0, 1], top_k=(1,))
    assert m["per_class"]["1"]["precision"] == 0.0 and m["per_class"]["1"]["recall"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_confusion_matrix_counts():
    cm = confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("scores, labels, field", [
    ([1.0, 2.0], [0], "scores"),                      # not 2-D
    ([[1.0], [2.0]], [0, 0], "scores"),               # one class
    (np.zeros((0, 3)), [], "scores"),                 # no samples
    ([[1.0, float("nan")]], [0], "scores"),           # NaN
    ([["a", "b"]], [0], "scores"),                    # not numbers
    ([[1.0, 0.0], [0.0, 1.0]], [0], "labels"),        # one label for two rows
    ([[1.0, 0.0]], [2], "labels"),                    # outside 0..C-1
    ([[1.0, 0.0]], [-1], "labels"),
    ([[1.0, 0.0]], [0.5], "labels"),                  # not an index
])
def test_bad_inputs_are_rejected_naming_the_field(scores, labels, field):
    with pytest.raises(InputRejected) as err:
        classify(scores, labels, top_k=(1,))
    assert err.value.field == field


def test_bad_top_k_and_class_names_are_rejected():
    with pytest.raises(InputRejected, match="k must be >= 1"):
        classify(LOGITS, LABELS, top_k=(0,))
    with pytest.raises(InputRejected, match="3 distinct class names"):
        classify(LOGITS, LABELS, class_names=["a", "a", "b"])


# -- against scikit-learn ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")  # k=5 of 5 classes, on purpose
@pytest.mark.parametrize("seed, n, c, bias", [(0, 500, 7, None), (1, 64, 5, 3), (2, 1000, 10, 0)])
def test_matches_sklearn(seed, n, c, bias):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels] * rng.random((n, 1))
    if bias is not None:  # class `bias` is never predicted: exercises zero precision
        logits[:, bias] = -100.0
    probs = _softmax(logits)
    m = classify(probs, labels, top_k=(1, 3, 5))
    classes = list(range(c))

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(labels, probs.argmax(1), average="macro", zero_division=0), abs=1e-12)
    for k in (1, 3, 5):
        assert m["top_k"][str(k)] == pytest.approx(
            skm.top_k_accuracy_score(labels, probs, k=k, labels=classes), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, probs.argmax(1), labels=classes).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(labels, probs.argmax(1), labels=classes, zero_division=0)
    pc = [m["per_class"][str(i)] for i in classes]
    assert [x["precision"] for x in pc] == pytest.approx(p.tolist(), abs=1e-12)
    assert [x["recall"] for x in pc] == pytest.approx(r.tolist(), abs=1e-12)
    assert [x["f1"] for x in pc] == pytest.approx(f.tolist(), abs=1e-12)
    assert [x["support"] for x in pc] == s.tolist()
    if bias is not None:
        assert m["per_class"][str(bias)]["predicted"] == 0
