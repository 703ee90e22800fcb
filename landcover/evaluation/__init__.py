"""Map vs reference, without Lightning: streaming confusion matrix, scores, reports."""
