"""fer-tf: facial-expression recognition on TensorFlow/Keras, imbalance-aware from data to device."""

__version__ = "0.1.0"
