"""Evaluation: .bin pairs, IJB-B/C 1:1 and 1:N, open-set identification, CSV pairs, plots."""
