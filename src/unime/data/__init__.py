"""Readers and writers of the data formats: caption files, Flickr8k-layout photo folders, MMEB layouts."""
