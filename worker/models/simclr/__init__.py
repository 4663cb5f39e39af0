"""`simclr`: ResNet image encoders trained with SimCLR. adapter.py (serving and the model directory
format), train.py (the job: images, init model), fit.py (the training loop, no database),
options.py (its options)."""
