"""serve.py's REST service (LitServe): a trained model behind ``POST /predict``."""
