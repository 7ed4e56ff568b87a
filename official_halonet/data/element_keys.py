"""The keys of the dicts in the input pipeline's elements, shared by its stages and its readers.

  IMAGE, LABEL  the decoded record dict: the output of record_labels.LabelCheckingDecoder
                (encoded image bytes, class id), parsed by image_parser (the image replaced by
                the model's input)
  OK            image_parser.parse_images: whether the record's image parsed
  LABELS, MASK  an eval batch's targets dict (pipeline.build_dataset, eval_batching), which
                training.task reads

Constants only: this module imports nothing, so every data module may import it.
"""
# Keys of the decoded record dict flowing between Model Garden's stages.
IMAGE = 'image'
LABEL = 'label'
OK = 'ok'
MASK = 'mask'
LABELS = 'labels'
