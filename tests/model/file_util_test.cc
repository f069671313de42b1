#include "model/file_util.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace titans {
namespace {

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/file_util_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& name : List()) ::unlink((dir_ + "/" + name).c_str());
    ::rmdir(dir_.c_str());
  }
  std::vector<std::string> List() const {
    std::vector<std::string> names;
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return names;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    return names;
  }
  std::string dir_;
};

TEST_F(FileUtilTest, WriteThenRead) {
  const std::string path = dir_ + "/a.bin";
  std::string data(100000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  absl::StatusOr<std::string> got = ReadFileToString(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
  EXPECT_EQ(List(), std::vector<std::string>{"a.bin"});  // No temporary file left behind.
}

TEST_F(FileUtilTest, OverwriteAndEmpty) {
  const std::string path = dir_ + "/b";
  ASSERT_TRUE(WriteFileAtomic(path, "first contents").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "").ok());
  absl::StatusOr<std::string> got = ReadFileToString(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "");
}

TEST_F(FileUtilTest, ReadMissingIsNotFound) {
  const std::string path = dir_ + "/missing";
  absl::StatusOr<std::string> got = ReadFileToString(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find(path), std::string::npos) << got.status();
  EXPECT_NE(got.status().message().find("No such file"), std::string::npos) << got.status();
}

TEST_F(FileUtilTest, ReadDirectoryFails) {
  absl::StatusOr<std::string> got = ReadFileToString(dir_);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
}

TEST_F(FileUtilTest, WriteIntoMissingDirectoryFails) {
  const std::string path = dir_ + "/no/such/dir/file";
  absl::Status s = WriteFileAtomic(path, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
}

TEST_F(FileUtilTest, RenameFailureRemovesTempFile) {
  const std::string path = dir_ + "/sub";
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  const std::string inner = path + "/keep";
  ASSERT_TRUE(WriteFileAtomic(inner, "x").ok());
  // Renaming a file over a non-empty directory fails.
  absl::Status s = WriteFileAtomic(path, "data");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  EXPECT_EQ(List(), std::vector<std::string>{"sub"});
  ::unlink(inner.c_str());
  ::rmdir(path.c_str());
}

TEST_F(FileUtilTest, RelativePathInCurrentDirectory) {
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir_.c_str()), 0);
  const absl::Status s = WriteFileAtomic("rel.txt", "hello");
  const absl::StatusOr<std::string> got = ReadFileToString("rel.txt");
  ASSERT_EQ(::chdir(cwd), 0);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "hello");
}

}  // namespace
}  // namespace titans
