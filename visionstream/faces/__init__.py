"""Faces: the MTCNN detector, embedders, enrolled identities, identification and face history."""
