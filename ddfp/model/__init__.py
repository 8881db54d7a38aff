from ddfp.model.deeplab import DeepLabV3Plus, SegOutput, build_model

__all__ = ["DeepLabV3Plus", "SegOutput", "build_model"]
