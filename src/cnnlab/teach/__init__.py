"""Teaching: the tutorial's ideas as code that computes them, for the CLI and any other front end.

cnnlab.teach.layers       from-scratch reference layers, checked against PyTorch
cnnlab.teach.explain      worked examples of convolution, max pooling and batch norm
cnnlab.teach.summary      a model's layer table: shapes, parameters, multiply-adds, memory
cnnlab.teach.params       parameter counts: linear against convolutional layers
cnnlab.teach.shapes       output sizes, the formula with the numbers in
cnnlab.teach.featuremaps  the feature maps a CNN computes for one input
cnnlab.teach.compare      CNN vs MLP on the same recipe and seeds

Each returns data (dataclasses, lines of text) that a front end renders.
"""
