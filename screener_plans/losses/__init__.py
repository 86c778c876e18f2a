"""Self-supervised losses on positive pairs of embeddings (N, D): VICReg and InfoNCE (SimCLR).

Both return a dict of scalar tensors with the total under "loss" plus each term for logging.
"""

from .infonce import InfoNCELoss
from .vicreg import VICRegLoss, vicreg_terms

SSL_LOSSES = {"vicreg": VICRegLoss, "simclr": InfoNCELoss}

__all__ = ["InfoNCELoss", "VICRegLoss", "vicreg_terms", "SSL_LOSSES"]
