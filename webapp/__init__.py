"""Gradio review UI: arrives with the web-app issue; nothing here yet."""
