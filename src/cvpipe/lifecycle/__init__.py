"""Model lifecycle after export: champion/challenger promotion (``promote``, ``bootstrap``, ``evaluation``) and
scheduled retraining (``retrain``)."""
