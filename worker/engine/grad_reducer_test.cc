#include "worker/engine/grad_reducer.h"

#include <vector>

#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

TEST(GradReducerTest, CopyReducerLeavesTheSumOnEveryReplica) {
  torch::manual_seed(3);
  std::vector<std::vector<torch::Tensor>> t;
  std::vector<torch::Tensor> expected = {torch::zeros({5, 7}),
                                         torch::zeros({1})};
  for (int r = 0; r < 3; ++r) {
    std::vector<torch::Tensor> row = {torch::randn({5, 7}), torch::randn({1})};
    for (size_t k = 0; k < row.size(); ++k) expected[k] += row[k];
    t.push_back(row);
  }
  auto reducer = MakeCopyReducer();
  reducer->AllReduceSum(t);
  for (int r = 0; r < 3; ++r) {
    for (size_t k = 0; k < expected.size(); ++k) {
      EXPECT_TRUE(torch::allclose(t[r][k], expected[k], 1e-6, 1e-6));
      // Identical bytes on every replica, not merely close.
      EXPECT_TRUE(torch::equal(t[r][k], t[0][k]));
    }
  }
}

TEST(GradReducerTest, NcclNeedsDistinctCudaDevices) {
  auto cpu = MakeNcclReducer({torch::Device(torch::kCPU)});
  ASSERT_FALSE(cpu.ok());
  EXPECT_EQ(cpu.status().code(), absl::StatusCode::kInvalidArgument);
  auto twice = MakeNcclReducer(
      {torch::Device(torch::kCUDA, 0), torch::Device(torch::kCUDA, 0)});
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  // Whatever the build, the best reducer for CPU replicas is the copy one.
  EXPECT_EQ(MakeBestReducer({torch::Device(torch::kCPU),
                             torch::Device(torch::kCPU)})
                ->name(),
            "copy");
}

}  // namespace
}  // namespace roundhouse::engine
