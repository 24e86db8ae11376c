#include <string>

#include "common/clock.h"
#include "common/files.h"
#include "common/sha256.h"
#include "gtest/gtest.h"

namespace roundhouse {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(
      Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string million(1000000, 'a');
  EXPECT_EQ(Sha256Hex(million),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(FilesTest, AtomicWriteAndRead) {
  std::string dir = ::testing::TempDir() + "/files_test";
  ASSERT_TRUE(MakeDirs(dir).ok());
  std::string p = dir + "/a.txt";
  ASSERT_TRUE(WriteFileAtomically(p, "hello").ok());
  auto got = ReadFile(p);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "hello");
  auto files = ListFilesRecursive(dir);
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(files->size(), 1u);  // no temporary left behind
  EXPECT_FALSE(ReadFile(dir + "/missing").ok());
  EXPECT_TRUE(IsWithin("/a/b/c", "/a/b"));
  EXPECT_FALSE(IsWithin("/a/bc", "/a/b"));
  ASSERT_TRUE(RemoveTree(dir).ok());
}

TEST(FakeClockTest, Advances) {
  FakeClock c;
  absl::Time t0 = c.Now();
  c.Advance(absl::Seconds(5));
  EXPECT_EQ(c.Now() - t0, absl::Seconds(5));
}

}  // namespace
}  // namespace roundhouse
