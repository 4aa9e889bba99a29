"""The embedded default ensemble: a small ensemble trained here on scikit-learn's digits."""
