"""Converters: Keras 3 / tf.keras models and TensorFlow functions to JAX/Flax callables for the rfjax engine."""
