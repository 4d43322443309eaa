r"""CLUB, a sampled upper bound of mutual information, with its variational network.

Pengyu Cheng et al., "CLUB: A Contrastive Log-ratio Upper Bound of Mutual
Information", ICML 2020 (its sampled estimator, CLUB-S). A network
:math:`q_\theta(y \mid x) = \mathcal{N}(\mu_\theta(x), \operatorname{diag}\sigma^2_\theta(x))`
approximates the conditional; with :math:`q_\theta` close to it,

.. math::
    \hat{I}(x; y) = \frac{1}{B} \sum_b \Big[ \log q_\theta(y_b \mid x_b)
        - \log q_\theta(y_{\pi(b)} \mid x_b) \Big]

(:math:`\pi` a random permutation of the rows) is an upper bound to minimise.
The two objectives train different things: the bound trains the encoders of
``x`` and ``y`` (the network is held fixed), the log-likelihood trains the
network (the samples are held fixed), so one backward pass serves both.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class CLUBSample(nn.Module):
    r"""The variational Gaussian :math:`q_\theta(y \mid x)` of CLUB and its two objectives.

    :math:`\mu_\theta` and :math:`\log \sigma^2_\theta` are two-layer MLPs
    (``x_dim -> hidden_size -> y_dim``, ReLU; the log-variance ends in a tanh,
    which keeps :math:`\sigma^2` in :math:`[e^{-1}, e]`), as in the paper's
    released estimator.

    Args:
        x_dim (int), y_dim (int), hidden_size (int).
    """

    def __init__(self, x_dim, y_dim, hidden_size):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, y_dim), nn.Tanh()
        )

    @staticmethod
    def _run(network, x, frozen):
        # the MLP with its weights detached (frozen) or not
        for layer in network:
            if isinstance(layer, nn.Linear) and frozen:
                x = F.linear(x, layer.weight.detach(), layer.bias.detach())
            else:
                x = layer(x)
        return x

    def gaussian(self, x, frozen=False):
        r""":math:`\mu_\theta(x)` and :math:`\log \sigma^2_\theta(x)`, each ``[B, y_dim]``."""
        return self._run(self.mu, x, frozen), self._run(self.logvar, x, frozen)

    def learning_loss(self, x, y):
        r"""Negative log-likelihood of ``y`` under :math:`q_\theta(\cdot \mid x)`, for the network only.

        ``x`` and ``y`` (``[B, x_dim]``, ``[B, y_dim]``) are detached; the
        constant :math:`\frac{1}{2}\log 2\pi` is left out. Mean over rows.
        """
        mu, logvar = self.gaussian(x.detach())
        nll = 0.5 * ((mu - y.detach()) ** 2 / logvar.exp() + logvar)
        return nll.sum(dim=1).mean()

    def upper_bound(self, x, y):
        r"""CLUB-S between ``x`` ``[B, x_dim]`` and ``y`` ``[B, y_dim]``, for the encoders only.

        The network's parameters are detached; ``x`` and ``y`` keep their graph.
        """
        mu, logvar = self.gaussian(x, frozen=True)
        shuffled = y[torch.randperm(y.shape[0], device=y.device)]
        positive = -((mu - y) ** 2) / logvar.exp()
        negative = -((mu - shuffled) ** 2) / logvar.exp()
        return 0.5 * (positive.sum(dim=1) - negative.sum(dim=1)).mean()
