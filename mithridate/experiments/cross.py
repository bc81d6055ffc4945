"""Issue 11: paper 002's optimal attack against paper 000's Wasserstein-robust defence
(cross-mnist, cross-fmnist)."""
