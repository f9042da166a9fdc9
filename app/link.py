"""The link function of an explanation (shap's ``link``), importable without numpy.

The toolkit's CLI uses ``Link`` as an option type, so this module stays light: numpy is imported
only when a link is applied. ``app.kernel_shap`` re-exports it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

LOGIT_EPSILON = 1e-15  # shap's LogitLink clips probabilities to [eps, 1 - eps]


class Link(enum.StrEnum):
    IDENTITY = "identity"
    LOGIT = "logit"

    def apply(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The link of values of any shape; logit clips to [1e-15, 1 - 1e-15] first, like shap,
        so probabilities of exactly 0 or 1 (a forest's) stay finite."""
        import numpy as np

        array = np.asarray(values, dtype=np.float64)
        if self is Link.IDENTITY:
            return array
        clipped = np.clip(array, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
        return np.asarray(np.log(clipped / (1.0 - clipped)))
