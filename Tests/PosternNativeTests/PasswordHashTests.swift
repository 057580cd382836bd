import XCTest

@testable import PosternNative

final class PasswordHashTests: XCTestCase {
    // Made with `mkpasswd -m yescrypt 'correct horse'` and `openssl passwd -6 -salt abcdefgh secret`.
    let yescrypt = "$y$j9T$okFuhCLHXd/vHgzBXh3r1.$rsPF2eEhS2Q9x.wDVyrTg3Ar2mUaCq80VpsWTdIopY4"
    let sha512 = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."

    func testYescryptAndSHA512Verify() {
        XCTAssertTrue(PasswordHash.verify("correct horse", against: yescrypt))
        XCTAssertFalse(PasswordHash.verify("correct horse ", against: yescrypt))
        XCTAssertTrue(PasswordHash.verify("secret", against: sha512))
        XCTAssertFalse(PasswordHash.verify("Secret", against: sha512))
    }

    func testWeakOrMalformedHashesNeverVerify() {
        // DES and MD5-crypt are refused even when the password is right.
        XCTAssertFalse(PasswordHash.isSupported("abJnggxhB/yWI"))
        XCTAssertFalse(PasswordHash.verify("secret", against: "$1$abcdefgh$5fP6H7kHDCvbxQnDGMnuo/"))
        XCTAssertFalse(PasswordHash.verify("", against: ""))
        XCTAssertFalse(PasswordHash.verify("secret", against: "$6$abcdefgh$truncated"))
        XCTAssertFalse(PasswordHash.verify("secret", against: "$y$"))
        // A NUL would truncate the password in C: refused outright.
        XCTAssertFalse(PasswordHash.verify("secret\0more", against: sha512))
    }
}
