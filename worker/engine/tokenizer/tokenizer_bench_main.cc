// tokenizer_bench: tokens per second of the native tokenizer on a corpus
// file (see corpus_io.h), for comparison with tests/tokenizer/bench.js on
// the same file. Not a test; results are recorded in bench/tokenizer.md.
//
//   tokenizer_bench TOKENIZER_JSON CORPUS [REPEATS=5]
// Prints the load time, then per repeat the tokens, seconds and tokens/s,
// then the best repeat.
#include <chrono>
#include <cstdlib>
#include <iostream>

#include "worker/engine/tokenizer/corpus_io.h"
#include "worker/engine/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: tokenizer_bench TOKENIZER_JSON CORPUS [REPEATS]\n";
    return 2;
  }
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto tok = roundhouse::tokenizer::Tokenizer::LoadFromFile(argv[1]);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 2;
  }
  const double load_s =
      std::chrono::duration<double>(Clock::now() - t0).count();
  auto corpus = roundhouse::tokenizer::ReadCorpusFile(argv[2]);
  if (!corpus.ok()) {
    std::cerr << corpus.status() << "\n";
    return 2;
  }
  size_t bytes = 0;
  for (const auto& t : *corpus) bytes += t.size();
  std::cout << "load_seconds " << load_s << "\n"
            << "documents " << corpus->size() << " bytes " << bytes << "\n";
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    size_t tokens = 0;
    const auto start = Clock::now();
    for (const std::string& text : *corpus) {
      auto ids = (*tok)->Encode(text, false);
      if (!ids.ok()) {
        std::cerr << ids.status() << "\n";
        return 1;
      }
      tokens += ids->size();
    }
    const double s =
        std::chrono::duration<double>(Clock::now() - start).count();
    const double tps = static_cast<double>(tokens) / s;
    best = std::max(best, tps);
    std::cout << "repeat " << r << " tokens " << tokens << " seconds " << s
              << " tokens_per_second " << tps << "\n";
  }
  std::cout << "best_tokens_per_second " << best << "\n";
  return 0;
}
