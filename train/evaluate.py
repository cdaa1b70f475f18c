"""Scores of a genre classifier at chunk and track level (NumPy only).

A track's genre comes from its chunks' probabilities, aggregated two ways:
  votes      the genre most chunks rank first, ties broken by mean
             probability: what the daemon answers as "top";
  mean_prob  the genre with the highest mean chunk probability.

metrics() gives accuracy, balanced accuracy (mean per-genre recall over the
genres present), per-genre precision/recall/F1 and the confusion matrix
(rows: true genre, columns: predicted).

What it does not do: run models (train.py), draw (card.py).
"""
import numpy as np


def track_scores(probs, owner, n_tracks):
    """Per-track genre scores from chunk probabilities [N, G] and the track
    index of each chunk: (votes, mean). votes holds the chunk vote counts
    plus 1e-3 x the mean probability, so argmax breaks ties the way the
    daemon does."""
    g = probs.shape[1]
    votes = np.zeros((n_tracks, g))
    mean = np.zeros((n_tracks, g))
    counts = np.bincount(owner, minlength=n_tracks)[:, None]
    np.add.at(votes, (owner, probs.argmax(1)), 1)
    np.add.at(mean, owner, probs)
    mean /= np.maximum(counts, 1)
    return votes + mean * 1e-3, mean


def confusion(true, pred, n):
    c = np.zeros((n, n), dtype=np.int64)
    np.add.at(c, (np.asarray(true), np.asarray(pred)), 1)
    return c


def metrics(true, pred, genres):
    """Accuracy, balanced accuracy, per-genre precision/recall/F1/support and
    the confusion matrix of integer labels. Genres without true items count
    neither in balanced accuracy nor in macro F1 (their recall is undefined);
    their precision is still reported when something was predicted as them."""
    n = len(genres)
    c = confusion(true, pred, n)
    support, predicted, hit = c.sum(1), c.sum(0), np.diag(c)
    per = {}
    for i, g in enumerate(genres):
        # Nothing predicted as g: precision is undefined; as sklearn, say 0
        # when g has true items (they were all missed), else nothing.
        p = hit[i] / predicted[i] if predicted[i] else (0.0 if support[i] else None)
        r = hit[i] / support[i] if support[i] else None
        f = None if r is None else (2 * p * r / (p + r) if p + r > 0 else 0.0)
        per[g] = {"precision": _f(p), "recall": _f(r), "f1": _f(f), "support": int(support[i])}
    present = [i for i in range(n) if support[i]]
    return {
        "accuracy": float(hit.sum() / max(1, c.sum())),
        "balanced_accuracy": float(np.mean([hit[i] / support[i] for i in present])) if present else 0.0,
        "macro_f1": float(np.mean([per[genres[i]]["f1"] for i in present])) if present else 0.0,
        "items": int(c.sum()),
        "per_genre": per,
        "confusion": c.tolist(),
    }


def _f(v):
    return None if v is None else float(v)


def evaluate_probs(probs, y, owner, track_labels, genres):
    """Chunk- and track-level metrics of chunk probabilities [N, G] with chunk
    labels y, chunk owners and the tracks' labels. Returns a dict with
    chunk, votes and mean_prob metrics and the per-track predictions."""
    track_labels = np.asarray(track_labels)
    votes, mean = track_scores(probs, owner, len(track_labels))
    return {
        "chunk": metrics(y, probs.argmax(1), genres),
        "votes": metrics(track_labels, votes.argmax(1), genres),
        "mean_prob": metrics(track_labels, mean.argmax(1), genres),
        "track_pred_votes": votes.argmax(1).tolist(),
        "track_pred_mean_prob": mean.argmax(1).tolist(),
        "track_mean_probs": mean.tolist(),
    }


def summary(ev):
    """One line of the headline numbers of evaluate_probs()'s result."""
    return (f"track acc votes {ev['votes']['accuracy']:.3f} "
            f"mean-prob {ev['mean_prob']['accuracy']:.3f}, "
            f"balanced {ev['votes']['balanced_accuracy']:.3f}, "
            f"chunk acc {ev['chunk']['accuracy']:.3f}")
