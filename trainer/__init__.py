"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) trained from the packed splits that imagenet_prep writes."""
