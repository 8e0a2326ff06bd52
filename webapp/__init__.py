"""The Gradio review app: a view over the service layer (``protoatlas.service``)."""
