"""The inspectors' app (``app.py``): a local web page over a trained model, on Gradio."""
