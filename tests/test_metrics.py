import numpy as np
import pytest

from evalstack.evaluation.metrics import classification_report

LABELS = ("a", "b", "c", "d")


def test_report_on_a_hand_checked_example():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    report = classification_report(y_true, y_pred, LABELS)
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.per_class_accuracy == {"a": 0.5, "b": 1.0, "c": 0.0}
    # F1: a = 2·(1/2·1/2)/(1) = 0.5, b = 2·(2/3·1)/(5/3) = 0.8, c = 0 → mean 0.4333
    assert report.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report.classes == ("a", "b", "c")  # 'd' never occurs, so it does not dilute macro F1
    assert report.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no items"):
        classification_report(np.array([], int), np.array([], int), LABELS)


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_and_macro_f1_equal_sklearns(seed: int):
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 7, 300), rng.integers(0, 9, 300)  # predicted classes that never occur
    y_pred[:100] = y_true[:100]
    report = classification_report(y_true, y_pred, tuple("abcdefghij"))
    present = np.unique(np.concatenate([y_true, y_pred]))
    assert report.confusion.tolist() == confusion_matrix(y_true, y_pred, labels=present).tolist()
    expected = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    assert report.macro_f1 == pytest.approx(expected, abs=1e-12)
