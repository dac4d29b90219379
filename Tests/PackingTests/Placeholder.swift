import XCTest
final class PackingTestsPlaceholder: XCTestCase { func testPlaceholder() {} }
