"""Packing: source items -> decoded, resized, encoded records committed to a store.

    worker.py    decode, resize, encode one image (every packer's worker processes run it)
    commits.py   what the packers share: the commit size, the split's clock, report entries in record order
    inorder.py   layouts read item by item (byte ranges): records committed in record order
    streamed.py  layouts read unit by unit (Hugging Face shards): records committed at their final index
    run.py       run_prep: plan the splits, choose the packer by the layout's `streamed`, write the report
"""
