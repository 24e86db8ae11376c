// tokenizer_encode: encodes every entry of a corpus file (see corpus_io.h)
// with the native tokenizer and writes one JSON array of ids per line, the
// same output format as tests/tokenizer/encode_reference.js.
//
//   tokenizer_encode TOKENIZER_JSON CORPUS OUT [--no-special]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>

#include "worker/engine/tokenizer/corpus_io.h"
#include "worker/engine/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: tokenizer_encode TOKENIZER_JSON CORPUS OUT "
                 "[--no-special]\n";
    return 2;
  }
  const bool special = !(argc > 4 && std::strcmp(argv[4], "--no-special") == 0);
  auto tok = roundhouse::tokenizer::Tokenizer::LoadFromFile(argv[1]);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 2;
  }
  auto corpus = roundhouse::tokenizer::ReadCorpusFile(argv[2]);
  if (!corpus.ok()) {
    std::cerr << corpus.status() << "\n";
    return 2;
  }
  std::ofstream out(argv[3], std::ios::binary | std::ios::trunc);
  for (const std::string& text : *corpus) {
    auto ids = (*tok)->Encode(text, special);
    if (!ids.ok()) {
      std::cerr << ids.status() << "\n";
      return 1;
    }
    out << '[';
    for (size_t i = 0; i < ids->size(); ++i) {
      if (i) out << ',';
      out << (*ids)[i];
    }
    out << "]\n";
  }
  out.close();
  if (!out) {
    std::cerr << "cannot write " << argv[3] << "\n";
    return 1;
  }
  return 0;
}
