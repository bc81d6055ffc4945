"""The heavy-ball step for numpy arrays and torch tensors, written once (numba: kernels.cpu.heavy_ball)."""


def step(theta, v, g, alpha, gamma):
    """v = gamma v - (1 - gamma) g; theta = theta + alpha v. Returns new (theta, v);
    gamma = 0 is plain gradient descent theta - alpha g. Broadcasts (alpha, gamma
    scalars or arrays shaped to broadcast against theta)."""
    v = gamma * v - (1 - gamma) * g
    return theta + alpha * v, v
