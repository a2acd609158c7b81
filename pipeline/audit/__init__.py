"""Label-error audit: score every annotation for likely errors from a model's predictions (scoring), and write a
review queue people can fix from (queue: an HTML page with crops, a CVAT for images 1.1 XML)."""
