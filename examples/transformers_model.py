"""Another paper's script, with an HF model loaded its own way, made to use ASL in two lines.

asl.generate takes the transformers model as it is: it is converted once into our decoder
over the very same parameter tensors (no copy), so deeper layers really run on the tokens
ASL selected. Run it:

    python examples/transformers_model.py [--model smollm2-135m]
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _text import FACTS, context, question


def main(model_name: str = "smollm2-135m", max_new_tokens: int = 6):
    from asl.models.loading import resolve_checkpoint

    path = resolve_checkpoint(model_name)  # in another paper's script: a hub id or a folder of theirs
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = context() + question("Lisbon")

    # Their code would call model.generate(...); the two added lines:
    import asl
    out = asl.generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                       selection=asl.FastKV(layer=model.config.num_hidden_layers // 2, select_tokens=128))

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1]:]
    print(f"asl (FastKV, 128 tokens after layer {out.trace.selection_layer}): {out.text!r}")
    print(f"transformers (full cache): {tokenizer.decode(theirs, skip_special_tokens=True)!r} "
          f"(the number is {FACTS['Lisbon']})")
    shared = asl.from_transformers(model).model.embed_tokens.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    print("weights shared, not copied:", shared)
    return out, theirs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    main(parser.parse_args().model)
