from ddfp.flow.density import DensityEstimator, FlowNLL, sample_pixels
from ddfp.flow.prior import GaussianMixturePrior

__all__ = ["DensityEstimator", "FlowNLL", "GaussianMixturePrior", "sample_pixels"]
