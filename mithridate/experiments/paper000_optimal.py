"""Issue 11: paper 000's figures under the optimal attack, and Theorem 2's certificate under attack."""
