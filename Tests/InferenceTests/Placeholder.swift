import XCTest
final class InferenceTestsPlaceholder: XCTestCase { func testPlaceholder() {} }
