import XCTest
final class VerifyTestsPlaceholder: XCTestCase { func testPlaceholder() {} }
