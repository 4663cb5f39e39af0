-- The model kinds that workers know, with the options ml.build_model accepts for each
-- (keys and defaults). Idempotent: re-applied by every migration.

INSERT INTO ml.model_kinds (kind, modalities, outputs, metric, train_options, description) VALUES
('pixels', '{image}', 'embedding', 'cosine', NULL,
 'raw-pixel baseline: the image resized to size x size (option size, default 16), grayscale, flattened, L2-normalised'),
('clip', '{image,text}', 'embedding', 'cosine',
 '{"base": null, "config": null, "tokenizer": null, "image_size": null, "image_col": "image_path",
   "text_col": "text", "batch_size": 32, "max_epochs": 3, "learning_rate": 5e-5, "weight_decay": 0.1,
   "seed": 0, "overwrite": false}',
 'CLIP dual encoder (transformers CLIPModel): image and text in one vector space'),
('simclr', '{image}', 'embedding', 'cosine',
 '{"image_col": "image_path", "batch_size": 256, "max_epochs": 5, "pretrained": false, "init": null,
   "overwrite": false, "learning_rate": 0.001, "weight_decay": 1e-6, "temperature": 0.5, "seed": 0,
   "arch": "resnet18", "image_size": null, "proj_dim": 128, "flip": false, "optimizer": "adamw"}',
 'ResNet encoder trained with SimCLR (NT-Xent) on images of a query; the embedding is the encoder output'),
('vilt', '{image,text}', 'answer', 'cosine',
 '{"base": null, "config": null, "image_col": "image_path", "question_col": "question",
   "answers_col": "answers", "batch_size": 4, "max_epochs": 20, "learning_rate": 5e-5,
   "weight_decay": 0.0, "seed": 0, "overwrite": false, "tokenizer": null, "image_size": null,
   "warmup_ratio": 0.0}',
 'ViLT visual question answering (ViltForQuestionAnswering): answers from the checkpoint''s labels'),
('blip2', '{image,text}', 'answer', 'cosine', NULL,
 'BLIP-2 generative visual question answering (Blip2ForConditionalGeneration), prompt "Question: {} Answer:"'),
('dual_encoder', '{image,text}', 'embedding', 'cosine',
 '{"vision": null, "text": null, "vision_config": null, "text_config": null, "tokenizer": null,
   "image_size": null, "max_length": 32, "projection_dim": 512, "train_encoders": false,
   "image_col": "image_path", "text_col": "text", "batch_size": 32, "max_epochs": 3,
   "learning_rate": 1e-4, "weight_decay": 0.1, "seed": 0, "overwrite": false}',
 'retrieval dual encoder from two pre-trained encoders (VisionTextDualEncoderModel: ViT/Swin/BEiT/DeiT/CLIP vision + BERT/RoBERTa)')
ON CONFLICT (kind) DO UPDATE SET modalities = EXCLUDED.modalities, outputs = EXCLUDED.outputs,
    metric = EXCLUDED.metric, train_options = EXCLUDED.train_options, description = EXCLUDED.description;
